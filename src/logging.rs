//! The log subscriber: text or JSON, the same for the binary and the tests that read it.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the process's global subscriber: `format` at `filter`, written to `writer`,
/// with ANSI colours only if `ansi` (text only). Fails if one is installed already.
pub fn install<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Result<(), tracing_subscriber::util::TryInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::util::SubscriberInitExt;
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_target(false)
            .with_writer(writer)
            .finish()
            .try_init(),
        // One object per line: the event's fields at the top level, the connection's span
        // (session id, peer, user) under `span`, and the target (`s3sftp::audit` for audit
        // events) so a shipper can route them.
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .finish()
            .try_init(),
    }
}
