//! Whether upload bodies are covered by the SigV4 signature.
//!
//! aws-sdk-s3 hashes every in-memory body with SHA-256 to sign it, and the S3 server hashes
//! it again to check. That protects data on a network that can corrupt or alter it; over
//! TLS (which has its own integrity check) or over loopback (no network at all) it only
//! costs CPU: a fifth of the gateway's CPU on a 1 GiB upload here. So by default PutObject
//! and UploadPart bodies are sent as `UNSIGNED-PAYLOAD` (what S3 clients do over HTTPS)
//! when the endpoint is HTTPS or loopback, and signed over plain HTTP to another host.

use aws_runtime::auth::PayloadSigningOverride;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// `--s3-payload-signing`: whether upload bodies are hashed into the request signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PayloadSigning {
    /// Sign only over plain HTTP to a host that is not loopback.
    #[default]
    Auto,
    /// Always sign upload bodies.
    Always,
    /// Never sign upload bodies (`UNSIGNED-PAYLOAD`).
    Never,
}

impl PayloadSigning {
    /// Whether upload bodies to `endpoint` (`None`: AWS, over HTTPS) are signed.
    pub fn signs(self, endpoint: Option<&str>) -> bool {
        match self {
            PayloadSigning::Always => true,
            PayloadSigning::Never => false,
            PayloadSigning::Auto => endpoint.is_some_and(|e| !is_tls_or_loopback(e)),
        }
    }
}

/// Whether `endpoint` is an `https://` URL or an `http://` URL whose host is loopback.
fn is_tls_or_loopback(endpoint: &str) -> bool {
    let lower = endpoint.trim().to_ascii_lowercase();
    if lower.starts_with("https://") {
        return true;
    }
    let Some(rest) = lower.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if host == "localhost" {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Sends PutObject and UploadPart bodies as `UNSIGNED-PAYLOAD`.
#[derive(Debug, Default)]
pub struct UnsignedUploads;

impl Intercept for UnsignedUploads {
    fn name(&self) -> &'static str {
        "UnsignedUploads"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let is_upload = cfg
            .load::<Metadata>()
            .is_some_and(|m| matches!(m.name(), "PutObject" | "UploadPart"));
        if is_upload {
            cfg.interceptor_state()
                .store_put(PayloadSigningOverride::UnsignedPayload);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_signs_only_plain_http_to_another_host() {
        let auto = PayloadSigning::Auto;
        assert!(!auto.signs(None), "AWS is HTTPS");
        assert!(!auto.signs(Some("https://minio.example.com:9000")));
        assert!(!auto.signs(Some("HTTPS://s3.example.com")));
        assert!(!auto.signs(Some("http://127.0.0.1:9000")));
        assert!(!auto.signs(Some("http://127.8.9.10")));
        assert!(!auto.signs(Some("http://localhost:3900/")));
        assert!(!auto.signs(Some("http://[::1]:9000")));
        assert!(!auto.signs(Some("http://user@127.0.0.1:9000/path")));
        assert!(auto.signs(Some("http://minio.internal:9000")));
        assert!(auto.signs(Some("http://10.0.0.5:9000")));
        assert!(auto.signs(Some("http://[2001:db8::1]:9000")));
        assert!(auto.signs(Some("http://localhost.evil.com")));
        assert!(auto.signs(Some("http://127.0.0.1.nip.io")));
        assert!(auto.signs(Some("ftp://127.0.0.1")), "unknown scheme: sign");
        assert!(PayloadSigning::Always.signs(Some("https://x")));
        assert!(!PayloadSigning::Never.signs(Some("http://10.0.0.5")));
    }
}
