use std::process::ExitCode;

use clap::Parser;
use npg::app::App;
use npg::config::{Cli, Command, Settings};
use tracing_subscriber::EnvFilter;

fn init_logging(settings: &Settings) -> Result<(), String> {
    let filter = EnvFilter::try_new(&settings.log_level).map_err(|e| format!("LOG_LEVEL: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if settings.log_format == "json" {
        builder.json().init()
    } else {
        builder.init()
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = cli.settings;
    if let Err(e) = init_logging(&settings).and_then(|()| settings.validate()) {
        eprintln!("npg: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("{:#?}", settings.redacted());
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
        Command::Serve => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("npg: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = App::new(&settings)?;
    let addr = std::net::SocketAddr::new(settings.http_bind, settings.http_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("HTTP_PORT: cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, upstream = %settings.upstream_base(), public = %settings.public_base(), redis = app.redis.state().as_str(), "npg listening");
    let router = npg::http::routes::router(app);
    npg::http::server::serve(listener, router, shutdown_signal(), settings.shutdown_timeout).await;
    tracing::info!("stopped");
    Ok(())
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
