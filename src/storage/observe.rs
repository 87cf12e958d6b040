//! An SDK interceptor that reports every S3 request to [`crate::metrics`]: operation, HTTP
//! status, time from first send to final answer (retries included), and each retry. It
//! sees what the SDK sends, so no call site can be left out of the figures.

use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

/// When the operation began, and how many attempts it has made.
#[derive(Debug, Clone)]
struct Started {
    at: Instant,
    attempts: u32,
}

impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

/// Feeds the S3 request metrics.
#[derive(Debug, Default)]
pub struct S3Metrics;

fn operation(cfg: &ConfigBag) -> &str {
    cfg.load::<Metadata>().map_or("unknown", |m| m.name())
}

impl Intercept for S3Metrics {
    fn name(&self) -> &'static str {
        "S3Metrics"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Started {
            at: Instant::now(),
            attempts: 0,
        });
        Ok(())
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(mut started) = cfg.load::<Started>().cloned() else {
            return Ok(());
        };
        started.attempts += 1;
        if started.attempts > 1 {
            crate::metrics::s3_retry(operation(cfg));
        }
        cfg.interceptor_state().store_put(started);
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(started) = cfg.load::<Started>() else {
            return Ok(());
        };
        let status = context.response().map(|r| r.status().as_u16());
        crate::metrics::s3_request(operation(cfg), status, started.at.elapsed());
        Ok(())
    }
}
