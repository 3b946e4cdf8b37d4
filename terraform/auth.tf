# Cognito as the OAuth2/OIDC issuer: a resource server with the gateway's three scopes and a
# machine client (client credentials) for uploaders and viewers' back ends.
resource "aws_cognito_user_pool" "gateway" {
  name = "${var.name}-users"
}

resource "aws_cognito_user_pool_domain" "gateway" {
  domain       = "${var.name}-auth"
  user_pool_id = aws_cognito_user_pool.gateway.id
}

resource "aws_cognito_resource_server" "gateway" {
  user_pool_id = aws_cognito_user_pool.gateway.id
  identifier   = "dicom-gateway"
  name         = "dicom-gateway"
  scope {
    scope_name        = "dicomweb.read"
    scope_description = "QIDO-RS and WADO-RS"
  }
  scope {
    scope_name        = "dicomweb.write"
    scope_description = "STOW-RS"
  }
  scope {
    scope_name        = "gateway.admin"
    scope_description = "Operator API"
  }
}

resource "aws_cognito_user_pool_client" "uploader" {
  name                                 = "${var.name}-uploader"
  user_pool_id                         = aws_cognito_user_pool.gateway.id
  generate_secret                      = true
  allowed_oauth_flows                  = ["client_credentials"]
  allowed_oauth_flows_user_pool_client = true
  allowed_oauth_scopes = [
    "dicom-gateway/dicomweb.read",
    "dicom-gateway/dicomweb.write",
  ]
  depends_on = [aws_cognito_resource_server.gateway]
}
