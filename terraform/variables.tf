variable "region" {
  description = "AWS region to deploy into"
  type        = string
}

variable "name" {
  description = "Name prefix for every resource"
  type        = string
  default     = "dicom-gateway"
}

variable "vpc_id" {
  description = "VPC holding the gateway (usually peered or VPN-connected to the hospital network)"
  type        = string
}

variable "private_subnet_ids" {
  description = "Subnets for the gateway tasks and the database"
  type        = list(string)
}

variable "dimse_allowed_cidrs" {
  description = "Hospital networks allowed to open DIMSE associations (modalities, PACS)"
  type        = list(string)
}

variable "https_allowed_cidrs" {
  description = "Networks allowed to reach the HTTPS (DICOMweb) listener"
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate for the HTTPS listener"
  type        = string
}

variable "image" {
  description = "Container image of dicom-gateway (built from infra/Dockerfile)"
  type        = string
}

variable "ae_title" {
  description = "AE title of the gateway's DIMSE listener"
  type        = string
  default     = "GATEWAY"
}

variable "desired_count" {
  description = "Replicas at rest"
  type        = number
  default     = 2
}

variable "max_count" {
  description = "Upper bound for autoscaling on queue depth"
  type        = number
  default     = 8
}

variable "queue_depth_target" {
  description = "Pending deliveries per replica that autoscaling aims for"
  type        = number
  default     = 500
}

variable "db_instance_class" {
  description = "RDS PostgreSQL instance class"
  type        = string
  default     = "db.t4g.medium"
}

variable "delivery_bucket_arns" {
  description = "Buckets that `type: s3` destinations deliver to (ARNs); the task role may write them"
  type        = list(string)
  default     = []
}

variable "delivery_kms_key_arns" {
  description = "KMS keys of those buckets' SSE-KMS (sse_kms_key_id), if any"
  type        = list(string)
  default     = []
}
