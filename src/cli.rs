//! The command line: one dispatcher for the subcommands (`serve`, the default; `check-config`,
//! `gen-key`, `health`, `status`, `hash-token`, `lockfile`, `warm`, `export`, `import`), and `serve`'s
//! life: listeners, jobs, the drain on SIGTERM.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::app::App;
use crate::config::{Cli, Command, Settings};
use crate::preflight::Preflight;

fn init_logging(settings: &Settings) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&settings.log_level).map_err(|e| anyhow!("LOG_LEVEL: {e}"))?;
    // Colour codes only for a person at a terminal: never in files, pipes or log collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if settings.log_format == crate::config::LogFormat::Json {
        builder.json().init()
    } else {
        builder.init()
    }
    Ok(())
}

/// The one dispatcher: the subcommands that need no server settings run without them; `serve`
/// (the default) and `check-config` parse and check the settings first.
pub fn main() -> ExitCode {
    match Command::standalone(std::env::args().nth(1).as_deref()) {
        Some(standalone) => run(standalone),
        None => with_settings(Cli::parse()),
    }
}

fn run(command: Command) -> ExitCode {
    match command {
        Command::GenKey => {
            println!("{}", crate::tls::secret::generate());
            ExitCode::SUCCESS
        }
        Command::Health => health(),
        Command::Status => crate::status::terminal::main(std::env::args().skip(1)),
        Command::HashToken => hash_token(),
        Command::Lockfile => crate::lockfile::main(std::env::args().skip(1)),
        Command::Warm => crate::warm::main(std::env::args().skip(1)),
        Command::Export => crate::bundle::export_main(std::env::args().skip(1)),
        Command::Import => crate::bundle::import_main(std::env::args().skip(1)),
        Command::Serve | Command::CheckConfig => with_settings(Cli::parse()),
    }
}

/// `serve` or `check-config`: the start-up checks (exit 2 naming the setting), then the work.
fn with_settings(cli: Cli) -> ExitCode {
    let settings = cli.settings;
    let checked = match init_logging(&settings).and_then(|()| Preflight::run(&settings)) {
        Ok(checked) => checked,
        Err(e) => {
            eprintln!("npg: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("{:#?}", settings.redacted());
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
        Command::Serve => serve_until_stopped(settings, checked),
        // Named after a settings flag (`npg --http-port 1 gen-key`).
        standalone => run(standalone),
    }
}

fn serve_until_stopped(settings: Settings, checked: Preflight) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(serve(settings, checked)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("npg: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings, checked: Preflight) -> anyhow::Result<()> {
    let (app, jobs) = App::new(&settings, checked)?;
    // Above `app` (it asks what `/api/health` says), so started here.
    jobs.spawn("presence", crate::http::status::announce(app.clone()));
    let http_addr = std::net::SocketAddr::new(settings.http_bind, settings.http_port);
    let http = bind(http_addr, "HTTP_PORT").await?;
    // Every server stops on it.
    let stop = CancellationToken::new();
    let stopped = || stop.clone().cancelled_owned();
    let drain = settings.shutdown_timeout;
    let limits = crate::http::server::Limits::new(&settings, app.metrics.clone());
    let mut servers = tokio::task::JoinSet::new();
    match app.tls.clone() {
        None => {
            let router = crate::http::routes::router(app.clone());
            servers.spawn(crate::http::server::serve(
                http,
                router,
                None,
                stopped(),
                drain,
                limits.clone(),
            ));
        }
        Some(tls) => {
            let https_addr =
                std::net::SocketAddr::new(settings.https_bind.unwrap_or(settings.http_bind), settings.https_port);
            let https = bind(https_addr, "HTTPS_PORT").await?;
            let plain = if settings.http_redirect {
                crate::http::routes::redirect_router(app.clone(), settings.https_port, &settings.public_base())
            } else {
                crate::http::routes::router(app.clone())
            };
            servers.spawn(crate::http::server::serve(
                http,
                plain,
                None,
                stopped(),
                drain,
                limits.clone(),
            ));
            let router = crate::http::routes::router(app.clone());
            let serve_https = crate::http::server::serve(https, router, Some(tls.clone()), stopped(), drain, limits);
            servers.spawn(async move {
                // Connections wait in the backlog until the certificate is known (bounded).
                tls.first_look(std::time::Duration::from_secs(5)).await;
                serve_https.await
            });
            tracing::info!(%https_addr, domains = ?settings.npg_domain, "HTTPS listening");
        }
    }
    tracing::info!(%http_addr, upstream = %crate::upstream::redact::redact(&settings.upstream_base()), public = %settings.public_base(),
        redis = app.redis.state().as_str(), "npg listening");
    shutdown_signal().await;
    // Jobs stop at once, so their leases go to another replica while this one drains.
    jobs.stop();
    if !settings.shutdown_delay.is_zero() {
        // Balancers see the 503 health and stop routing here before the listeners close.
        app.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            "draining: health answers 503 for {:?} before the listeners close",
            settings.shutdown_delay
        );
        tokio::time::sleep(settings.shutdown_delay).await;
    }
    stop.cancel();
    while servers.join_next().await.is_some() {}
    if !app.tarballs.landed(settings.shutdown_timeout).await {
        tracing::warn!(bound = ?settings.shutdown_timeout, "tarball downloads still running at exit; not stored");
    }
    if !jobs.stopped(settings.shutdown_timeout).await {
        tracing::warn!(bound = ?settings.shutdown_timeout, "background jobs still running at exit");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reads a token on stdin (one trailing newline dropped, as `echo` adds it) and prints its
/// hash, so the plain token never goes into AUTH_TOKENS_FILE.
fn hash_token() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input) {
        eprintln!("npg hash-token: cannot read the token on stdin: {e}");
        return ExitCode::from(2);
    }
    let token = input.strip_suffix('\n').unwrap_or(&input);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.is_empty() || token.contains(char::is_whitespace) {
        eprintln!("npg hash-token: give one token on stdin (no spaces), e.g. `printf %s \"$TOKEN\" | npg hash-token`");
        return ExitCode::from(2);
    }
    println!("{}", crate::auth::hash_token(token));
    ExitCode::SUCCESS
}

fn health() -> ExitCode {
    let args = crate::probe::HealthArgs::parse_from(std::env::args().skip(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(crate::probe::run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("npg health: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bind(addr: std::net::SocketAddr, setting: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{setting}: cannot listen on {addr}: {e}"))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
