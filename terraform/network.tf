# DIMSE is raw TCP: a Network Load Balancer keeps one association on one task.
# DICOMweb is HTTPS: an Application Load Balancer terminates TLS and health-checks /readyz.
resource "aws_security_group" "tasks" {
  name   = "${var.name}-tasks"
  vpc_id = var.vpc_id
  ingress {
    description = "DIMSE from the hospital networks (through the NLB, client IP preserved)"
    from_port   = 11112
    to_port     = 11112
    protocol    = "tcp"
    cidr_blocks = var.dimse_allowed_cidrs
  }
  ingress {
    description     = "HTTP from the ALB"
    from_port       = 8080
    to_port         = 8080
    protocol        = "tcp"
    security_groups = [aws_security_group.alb.id]
  }
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_security_group" "alb" {
  name   = "${var.name}-alb"
  vpc_id = var.vpc_id
  ingress {
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = var.https_allowed_cidrs
  }
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_lb" "dimse" {
  name               = "${var.name}-dimse"
  load_balancer_type = "network"
  internal           = true
  subnets            = var.private_subnet_ids
}

resource "aws_lb_target_group" "dimse" {
  name              = "${var.name}-dimse"
  port              = 11112
  protocol          = "TCP"
  target_type       = "ip"
  vpc_id            = var.vpc_id
  preserve_client_ip = true
  health_check {
    protocol = "HTTP"
    port     = "8080"
    path     = "/readyz"
  }
}

resource "aws_lb_listener" "dimse" {
  load_balancer_arn = aws_lb.dimse.arn
  port              = 11112
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.dimse.arn
  }
}

resource "aws_lb" "https" {
  name               = "${var.name}-https"
  load_balancer_type = "application"
  internal           = true
  subnets            = var.private_subnet_ids
  security_groups    = [aws_security_group.alb.id]
}

resource "aws_lb_target_group" "http" {
  name        = "${var.name}-http"
  port        = 8080
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  health_check {
    path = "/readyz"
  }
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.https.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.http.arn
  }
}
