use clap::Parser;
use rowpipe_upload::config::Config;
use rowpipe_upload::startup::Application;

// The system allocator, not the consumer's mimalloc: with rows of a
// mebibyte, mimalloc kept the freed buffers of concurrent uploads (8 uploads:
// 134 MiB RSS against 86 MiB with glibc, whose large blocks go back to the
// system at once). It costs the upload ~8% of its throughput on narrow rows
// (415k against 450k rows/s, docs/performance.md), far above what the
// consumers take.

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
