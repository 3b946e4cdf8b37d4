output "dimse_endpoint" {
  description = "Point modalities and PACS here (port 11112)"
  value       = aws_lb.dimse.dns_name
}

output "dicomweb_endpoint" {
  description = "DICOMweb base URL"
  value       = "https://${aws_lb.https.dns_name}"
}

output "oauth_issuer" {
  description = "Issuer for auth.mode oidc"
  value       = local.issuer
}

output "token_url" {
  description = "Client-credentials token endpoint for uploaders"
  value       = "https://${aws_cognito_user_pool_domain.gateway.domain}.auth.${var.region}.amazoncognito.com/oauth2/token"
}

output "spool_bucket" {
  value = aws_s3_bucket.spool.bucket
}
