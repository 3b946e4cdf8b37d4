# Shared spool (S3, SSE-KMS) and state (RDS PostgreSQL) for all replicas.
resource "aws_kms_key" "spool" {
  description         = "${var.name} spool encryption"
  enable_key_rotation = true
}

resource "aws_s3_bucket" "spool" {
  bucket_prefix = "${var.name}-spool-"
}

resource "aws_s3_bucket_public_access_block" "spool" {
  bucket                  = aws_s3_bucket.spool.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "spool" {
  bucket = aws_s3_bucket.spool.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.spool.arn
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "spool" {
  bucket = aws_s3_bucket.spool.id
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 2
    }
  }
}

resource "aws_db_subnet_group" "state" {
  name       = "${var.name}-state"
  subnet_ids = var.private_subnet_ids
}

resource "aws_security_group" "database" {
  name   = "${var.name}-database"
  vpc_id = var.vpc_id
  ingress {
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [aws_security_group.tasks.id]
  }
}

resource "aws_db_instance" "state" {
  identifier                  = "${var.name}-state"
  engine                      = "postgres"
  engine_version              = "15"
  instance_class              = var.db_instance_class
  allocated_storage           = 50
  storage_encrypted           = true
  db_name                     = "gateway"
  username                    = "gateway"
  manage_master_user_password = true
  db_subnet_group_name        = aws_db_subnet_group.state.name
  vpc_security_group_ids      = [aws_security_group.database.id]
  multi_az                    = true
  backup_retention_period     = 7
  deletion_protection         = true
  skip_final_snapshot         = false
  final_snapshot_identifier   = "${var.name}-state-final"
}
