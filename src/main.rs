//! The `s3sftp` binary: parses the command line and runs the library. Errors end here,
//! printed once with what to do next.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use s3sftp::cli::{setting_name, Cli, Command};
use s3sftp::control::client as control;

fn main() -> ExitCode {
    let cli = Cli::from_env_and_args();
    // s3s (the embedded store's HTTP layer) logs every routine 404 as an error; keep it
    // quiet unless the filter names it (`s3s::ops=info`). Not `s3s=off`: targets match by prefix and
    // that would silence `s3sftp` too.
    let directives = if cli.log.contains("s3s::") {
        cli.log.clone()
    } else {
        format!("{},s3s::ops=off", cli.log)
    };
    // `--log` was checked by the parser; this cannot fail unless the added directive does.
    let filter = match tracing_subscriber::EnvFilter::try_new(&directives) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("s3sftp: {}: invalid log filter: {e}", setting_name("--log"));
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = s3sftp::logging::install(cli.log_format, filter, log_colours(), std::io::stdout)
    {
        eprintln!("s3sftp: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Users(args) => s3sftp::admin::run(args).map_err(anyhow::Error::from),
        Command::Policy(args) => policy(&args),
        Command::Sessions(args) => control::sessions(&args).map_err(anyhow::Error::from),
        Command::Kick(args) => control::kick(&args).map_err(anyhow::Error::from),
        Command::Bans(args) => control::bans(&args).map_err(anyhow::Error::from),
        Command::Unban(args) => control::unban(&args).map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("s3sftp: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Colours in the log only on a terminal (the log goes to standard output), and never when
/// `NO_COLOR` is set to anything (no-color.org): journald and log files get plain text.
fn log_colours() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn serve(args: &s3sftp::cli::ServeArgs) -> anyhow::Result<ExitCode> {
    if args.check {
        return check(args);
    }
    // Named as the admin set it: the flag, its variable, or its config file key.
    let config = s3sftp::config::from_args(args)
        .map_err(|e| anyhow::anyhow!("{}: {}", args.setting_name(e.flag), e.message))?;
    tune_allocator();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = s3sftp::server::start(config).await?;
        wait_for_signal(&server).await;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// `s3sftp serve --check`: what was found on standard output, one line per mistake on
/// standard error; exit status 1 when there is any.
fn check(args: &s3sftp::cli::ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let findings = runtime.block_on(s3sftp::config_check::check(args));
    for line in &findings.found {
        println!("{line}");
    }
    for line in &findings.mistakes {
        eprintln!("s3sftp: {line}");
    }
    if findings.mistakes.is_empty() {
        println!("configuration OK");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("s3sftp: {} mistake(s) found", findings.mistakes.len());
        Ok(ExitCode::FAILURE)
    }
}

/// `s3sftp policy`: prints the least-privilege IAM policy.
fn policy(args: &s3sftp::cli::PolicyArgs) -> anyhow::Result<ExitCode> {
    let policy = s3sftp::storage::policy::least_privilege(&args.scope()?);
    println!("{}", serde_json::to_string_pretty(&policy)?);
    Ok(ExitCode::SUCCESS)
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the users file and keeps waiting.
async fn wait_for_signal(server: &s3sftp::server::RunningServer) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => server.reload_users(),
        }
    }
}

/// The error and its causes, each once: our error messages often quote their cause
/// already, so a cause whose text is part of the message so far is not repeated.
fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Transfer buffers are parts and chunks of several MiB. glibc's default mmap threshold
/// rises to the size of the first large buffer freed, after which such buffers come from
/// per-thread arenas that keep the memory when the buffer is freed: RSS then grows past
/// the transfer budgets. A fixed threshold (which also turns off that adjustment) maps each
/// large buffer on its own and gives it back when it is freed. `MALLOC_MMAP_THRESHOLD_` in
/// the environment still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(
    unsafe_code,
    reason = "mallopt is a C function; the one unsafe call in the workspace"
)]
fn tune_allocator() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return;
    }
    // SAFETY: mallopt only sets an allocator parameter; it is called before the runtime
    // starts any thread, and the value is within glibc's accepted range.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    if ok == 0 {
        tracing::debug!("mallopt(M_MMAP_THRESHOLD) was refused; keeping glibc's default");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
