use clap::Parser;
use rowpipe_upload::config::Config;
use rowpipe_upload::startup::Application;

// mimalloc: per-row strings are allocated on one runtime thread and freed on
// another; glibc's malloc spent as much CPU on that as the program's own code.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rowpipe_core::telemetry::install_crypto_provider();
    let config = Config::parse();
    let telemetry = rowpipe_core::telemetry::init("rowpipe-upload", &config.telemetry)?;
    let (_trigger, shutdown) = rowpipe_core::shutdown::on_signals();
    let result = match Application::build(config, shutdown).await {
        Ok(app) => app.run_until_stopped().await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "rowpipe-upload failed");
    }
    telemetry.shutdown();
    result
}
