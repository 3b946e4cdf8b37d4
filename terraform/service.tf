# The gateway as an ECS Fargate service: several replicas sharing the S3 spool and PostgreSQL,
# traces and metrics to AWS Distro for OpenTelemetry (X-Ray / CloudWatch), autoscaling on the
# delivery queue depth the gateway publishes.
resource "aws_ecs_cluster" "gateway" {
  name = var.name
}

resource "aws_cloudwatch_log_group" "gateway" {
  name              = "/ecs/${var.name}"
  retention_in_days = 30
}

data "aws_iam_policy_document" "assume_tasks" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.assume_tasks.json
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.assume_tasks.json
}

data "aws_iam_policy_document" "task" {
  statement {
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.spool.arn}/*"]
  }
  statement {
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.spool.arn]
  }
  statement {
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.spool.arn]
  }
  statement {
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "cloudwatch:PutMetricData"]
    resources = ["*"]
  }
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_db_instance.state.master_user_secret[0].secret_arn]
  }
  # `type: s3` destinations: upload (multipart too), HeadObject for the duplicate check,
  # DeleteObject to remove an object whose bytes did not match the spool's record.
  dynamic "statement" {
    for_each = length(var.delivery_bucket_arns) > 0 ? [1] : []
    content {
      actions = [
        "s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
      ]
      resources = [for arn in var.delivery_bucket_arns : "${arn}/*"]
    }
  }
  dynamic "statement" {
    for_each = length(var.delivery_bucket_arns) > 0 ? [1] : []
    content {
      actions   = ["s3:ListBucket"] # HeadObject of a missing key answers 404, not 403
      resources = var.delivery_bucket_arns
    }
  }
  dynamic "statement" {
    for_each = length(var.delivery_kms_key_arns) > 0 ? [1] : []
    content {
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = var.delivery_kms_key_arns
    }
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "${var.name}-task"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

locals {
  issuer = "https://cognito-idp.${var.region}.amazonaws.com/${aws_cognito_user_pool.gateway.id}"
}

resource "aws_ecs_task_definition" "gateway" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 2048
  memory                   = 4096
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions = jsonencode([
    {
      name         = "gateway"
      image        = var.image
      essential    = true
      portMappings = [{ containerPort = 11112 }, { containerPort = 8080 }]
      environment = [
        { name = "DICOM_GATEWAY_CONFIG", value = "/etc/dicom-gateway/gateway.aws.yaml" },
        { name = "GATEWAY_AE_TITLE", value = var.ae_title },
        { name = "GATEWAY_SPOOL", value = "s3://${aws_s3_bucket.spool.bucket}/spool" },
        { name = "GATEWAY_DB_HOST", value = aws_db_instance.state.address },
        { name = "GATEWAY_AUTH_ISSUER", value = local.issuer },
        { name = "GATEWAY_AUTH_AUDIENCE", value = aws_cognito_user_pool_client.uploader.id },
        { name = "AWS_REGION", value = var.region },
        { name = "OTEL_SERVICE_NAME", value = var.name },
        { name = "OTEL_EXPORTER_OTLP_ENDPOINT", value = "http://127.0.0.1:4318" },
      ]
      secrets = [
        { name = "GATEWAY_DB_PASSWORD", valueFrom = "${aws_db_instance.state.master_user_secret[0].secret_arn}:password::" },
      ]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.gateway.name
          awslogs-region        = var.region
          awslogs-stream-prefix = "gateway"
        }
      }
    },
    {
      name      = "adot-collector"
      image     = "public.ecr.aws/aws-observability/aws-otel-collector:latest"
      essential = false
      command   = ["--config=/etc/ecs/ecs-default-config.yaml"]
    },
  ])
}

resource "aws_ecs_service" "gateway" {
  name            = var.name
  cluster         = aws_ecs_cluster.gateway.id
  task_definition = aws_ecs_task_definition.gateway.arn
  desired_count   = var.desired_count
  launch_type     = "FARGATE"
  network_configuration {
    subnets         = var.private_subnet_ids
    security_groups = [aws_security_group.tasks.id]
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.dimse.arn
    container_name   = "gateway"
    container_port   = 11112
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.http.arn
    container_name   = "gateway"
    container_port   = 8080
  }
  # Replicas drain in-flight associations and batches on SIGTERM; leases cover the rest.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
}

resource "aws_appautoscaling_target" "gateway" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.gateway.name}/${aws_ecs_service.gateway.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.desired_count
  max_capacity       = var.max_count
}

resource "aws_appautoscaling_policy" "queue_depth" {
  name               = "${var.name}-queue-depth"
  service_namespace  = aws_appautoscaling_target.gateway.service_namespace
  resource_id        = aws_appautoscaling_target.gateway.resource_id
  scalable_dimension = aws_appautoscaling_target.gateway.scalable_dimension
  policy_type        = "TargetTrackingScaling"
  target_tracking_scaling_policy_configuration {
    target_value = var.queue_depth_target
    customized_metric_specification {
      metric_name = "gateway_queue_depth"
      namespace   = "dicom-gateway"
      statistic   = "Average"
    }
  }
}
