//! `rowpipe`: the operator CLI.
//!
//! * `rowpipe migrate`: apply the database migrations and create the stream's
//!   consumer group (what the Helm migration Job runs before a rollout).
//! * `rowpipe upload [--idempotency-key K] FILE`: stream a file to the upload
//!   service with a progress bar, then follow it until every row is
//!   processed. The key names the upload: when it is interrupted (the
//!   service's fault: an instance died, a connection dropped, a 5xx), the
//!   CLI sends the file again under the same key, which resumes it.
//! * `rowpipe status ID`, `rowpipe rejects ID`, `rowpipe list`.
//! * `rowpipe dead-letters list|replay`: what the consumers gave up on, and
//!   sending it through again ([`dead_letters`]).
//! * `rowpipe shards [--table]`: the stream's shard keys, or the chart's
//!   table of them.

mod dead_letters;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rowpipe_core::config::{DatabaseConfig, StreamConfig};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

#[derive(Parser, Debug)]
#[command(name = "rowpipe", version, about = "rowpipe operator CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the upload service is and how to authenticate.
#[derive(clap::Args, Debug, Clone)]
struct ApiArgs {
    /// Base URL of the upload service.
    #[arg(long, env = "ROWPIPE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token for the upload API.
    #[arg(long, env = "ROWPIPE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply database migrations and create the consumer group (idempotent).
    Migrate {
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        stream: StreamConfig,
        /// Only migrate the database; leave Redis alone.
        #[arg(long)]
        skip_stream: bool,
    },
    /// Upload a CSV file, then follow it until it is processed.
    Upload {
        #[command(flatten)]
        api: ApiArgs,
        /// The CSV file.
        file: PathBuf,
        /// Return once the rows are in the stream instead of waiting for consumers.
        #[arg(long)]
        no_wait: bool,
        /// Extra query parameters, e.g. `--param delimiter=; --param header=false`.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Give up waiting after this many seconds (0: wait forever).
        #[arg(long, default_value_t = 0)]
        timeout_secs: u64,
        /// Names the upload, so that sending it again resumes or replays it
        /// instead of loading it twice (default: a new key, printed).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Sends of the file in all, retries of an interrupted upload included.
        #[arg(long, default_value_t = 5)]
        max_attempts: u32,
    },
    /// Print an upload's status and counts.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// Write an upload's rejected rows as CSV (to stdout or --output).
    Rejects {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// List recent uploads.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// What the consumers gave up on (the dead-letter stream): list it, or
    /// replay it once the cause is fixed.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Print the stream's shard keys (`ROWPIPE_STREAM_SHARDS`) with their
    /// hash slots, or with `--table` the table of hash tags the Helm chart
    /// reads (`charts/rowpipe/files/shard-tags.yaml`).
    Shards {
        #[command(flatten)]
        stream: StreamConfig,
        /// Print the chart's table instead.
        #[arg(long)]
        table: bool,
    },
}

#[tokio::main]
async fn main() {
    rowpipe_core::telemetry::install_crypto_provider();
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate {
            database,
            stream,
            skip_stream,
        } => migrate(database, stream, skip_stream).await,
        Command::Shards { stream, table } => {
            if table {
                print!("{}", rowpipe_core::stream::shards::chart_table());
            } else {
                stream.validate()?;
                for (i, key) in stream.shards().keys().iter().enumerate() {
                    let slot = rowpipe_core::stream::shards::slot(key.as_bytes());
                    println!("{i}\t{key}\tslot {slot}");
                }
            }
            Ok(())
        }
        Command::Upload {
            api,
            file,
            no_wait,
            params,
            timeout_secs,
            idempotency_key,
            max_attempts,
        } => {
            let key = idempotency_key.unwrap_or_else(|| {
                let key = uuid::Uuid::new_v4().to_string();
                eprintln!(
                    "idempotency key {key} (pass --idempotency-key {key} to resume this upload)"
                );
                key
            });
            let job = UploadJob {
                api,
                file,
                no_wait,
                params,
                timeout_secs,
                key,
            };
            upload_with_retries(&job, max_attempts.max(1)).await
        }
        Command::Status { api, id } => {
            let status = get_json(&api, &format!("/v1/uploads/{id}")).await?;
            print_outcome(&status);
            Ok(())
        }
        Command::Rejects { api, id, output } => rejects(api, id, output).await,
        Command::DeadLetters(command) => dead_letters::run(command).await,
        Command::List { api } => {
            let list = get_json(&api, "/v1/uploads").await?;
            println!(
                "{:<38} {:<11} {:>10} {:>10} {:>10} {:>10}",
                "upload_id", "status", "read", "inserted", "duplicates", "rejected"
            );
            for u in list["uploads"].as_array().into_iter().flatten() {
                println!(
                    "{:<38} {:<11} {:>10} {:>10} {:>10} {:>10}",
                    u["upload_id"].as_str().unwrap_or(""),
                    u["status"].as_str().unwrap_or(""),
                    u["counts"]["read"],
                    u["counts"]["inserted"],
                    u["counts"]["duplicates"],
                    u["counts"]["rejected"]
                );
            }
            Ok(())
        }
    }
}

async fn migrate(
    database: DatabaseConfig,
    stream: StreamConfig,
    skip_stream: bool,
) -> anyhow::Result<()> {
    // A migration may rewrite a large table: no statement timeout (the
    // programs' sessions keep theirs).
    let database = DatabaseConfig {
        db_statement_timeout_ms: 0,
        ..database
    };
    let store = rowpipe_core::store::Store::connect(&database)
        .await
        .with_context(|| {
            format!(
                "connecting to {}",
                rowpipe_core::config::redact(&database.database_url)
            )
        })?;
    store.migrate().await?;
    println!(
        "database migrated ({}, schema version {})",
        store.dialect().name(),
        store.expected_schema_version()
    );
    if !skip_stream {
        stream.validate()?;
        let mut con = stream.redis_target().connect().await.with_context(|| {
            format!(
                "connecting to {}",
                rowpipe_core::config::redact(&stream.redis_url)
            )
        })?;
        let shards = stream.shards();
        rowpipe_core::stream::ensure_groups(&mut con, &shards, &stream.group).await?;
        for key in shards.keys() {
            println!("stream {key} has consumer group {}", stream.group);
        }
    }
    Ok(())
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?)
}

fn authed(api: &ApiArgs, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match &api.token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

async fn get_json(api: &ApiArgs, path: &str) -> anyhow::Result<Value> {
    let url = format!("{}{path}", api.url.trim_end_matches('/'));
    let resp = authed(api, client()?.get(&url))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "GET {url}: {status}: {}",
            body["error"]["message"].as_str().unwrap_or("no details")
        );
    }
    Ok(body)
}

async fn sha256_of(file: &PathBuf) -> anyhow::Result<String> {
    let mut f = tokio::fs::File::open(file).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// One `rowpipe upload`: what to send, and how to follow it.
struct UploadJob {
    api: ApiArgs,
    file: PathBuf,
    no_wait: bool,
    params: Vec<String>,
    timeout_secs: u64,
    key: String,
}

/// How one send of the file ended.
enum Sent {
    /// The upload reached an end that sending again cannot change.
    Done,
    /// The service's fault (connection error, 5xx, `409` while an earlier
    /// send is still held, an `interrupted` or `incomplete` upload): the
    /// same key resumes it.
    Retry(String),
}

/// Send the file, and again under the same key while the upload is
/// interrupted, with a growing pause, at most `max_attempts` times.
async fn upload_with_retries(job: &UploadJob, max_attempts: u32) -> anyhow::Result<()> {
    let mut pause = Duration::from_secs(1);
    for attempt in 1..=max_attempts {
        match upload(job).await? {
            Sent::Done => return Ok(()),
            Sent::Retry(why) if attempt < max_attempts => {
                eprintln!(
                    "upload interrupted ({why}); resuming with key {} in {} s (attempt {}/{max_attempts})",
                    job.key,
                    pause.as_secs(),
                    attempt + 1
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            Sent::Retry(why) => {
                bail!(
                    "upload interrupted ({why}) after {max_attempts} attempts; \
                     run again with --idempotency-key {} to resume it",
                    job.key
                )
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

async fn upload(job: &UploadJob) -> anyhow::Result<Sent> {
    let api = &job.api;
    let file = &job.file;
    let meta = tokio::fs::metadata(file)
        .await
        .with_context(|| format!("reading {}", file.display()))?;
    let size = meta.len();
    let sha = sha256_of(file).await?;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("upload.csv")
        .to_string();
    let mut query: Vec<(String, String)> = vec![("filename".into(), name.clone())];
    for p in &job.params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--param {p:?} is not KEY=VALUE"))?;
        query.push((k.to_string(), v.to_string()));
    }
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "uploading {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(name.clone());
    let f = tokio::fs::File::open(file).await?;
    let progress = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).inspect(move |chunk| {
        if let Ok(c) = chunk {
            progress.inc(c.len() as u64);
        }
    });
    let url = format!("{}/v1/uploads", api.url.trim_end_matches('/'));
    let sent = authed(api, client()?.post(&url))
        .query(&query)
        .header("content-type", "text/csv")
        .header("content-length", size)
        .header("x-content-sha256", &sha)
        .header("idempotency-key", &job.key)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    bar.finish_and_clear();
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => return Ok(Sent::Retry(format!("POST {url}: {e}"))),
    };
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let message = body["error"]["message"].as_str().unwrap_or("no details");
    if status.is_server_error() || status == reqwest::StatusCode::CONFLICT {
        return Ok(Sent::Retry(format!("{status}: {message}")));
    }
    if !status.is_success() {
        if body["error"]["resumable"] == true {
            return Ok(Sent::Retry(format!("{status}: {message}")));
        }
        bail!("upload refused: {status}: {message}");
    }
    let id = body["upload_id"].as_str().unwrap_or_default().to_string();
    if body["replayed"].as_bool() == Some(true) {
        println!("this file was already uploaded as {id}; not enqueued again");
    } else {
        let attempts = body["attempts"].as_i64().unwrap_or(1);
        println!(
            "upload {id}{}: {} rows enqueued ({} bytes, {}, delimiter {:?})",
            if attempts > 1 {
                format!(" (resumed, attempt {attempts})")
            } else {
                String::new()
            },
            body["rows_enqueued"],
            size,
            body["encoding"].as_str().unwrap_or("?"),
            body["delimiter"].as_str().unwrap_or("?")
        );
    }
    if job.no_wait {
        return Ok(Sent::Done);
    }
    let total = body["counts"]["read"].as_u64().unwrap_or(0);
    let bar = ProgressBar::new(total.max(1));
    bar.set_style(
        ProgressStyle::with_template("processing [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let final_status = loop {
        let s = get_json(api, &format!("/v1/uploads/{id}")).await?;
        bar.set_position(s["counts"]["processed"].as_u64().unwrap_or(0));
        if let Some("completed" | "failed" | "interrupted" | "incomplete") = s["status"].as_str() {
            break s;
        }
        if job.timeout_secs > 0 && started.elapsed() > Duration::from_secs(job.timeout_secs) {
            bar.finish_and_clear();
            bail!(
                "upload {id} not processed after {} s (status {})",
                job.timeout_secs,
                s["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    print_outcome(&final_status);
    match final_status["status"].as_str() {
        Some("failed") => bail!(
            "upload {id} failed: {}",
            final_status["error"].as_str().unwrap_or("unknown error")
        ),
        Some(open @ ("interrupted" | "incomplete")) => Ok(Sent::Retry(format!(
            "upload {id} is {open}: {}",
            final_status["error"]
                .as_str()
                .unwrap_or("rows were lost before being processed")
        ))),
        _ => Ok(Sent::Done),
    }
}

fn print_outcome(s: &Value) {
    let c = &s["counts"];
    println!("upload      {}", s["upload_id"].as_str().unwrap_or(""));
    println!("status      {}", s["status"].as_str().unwrap_or(""));
    println!("rows read   {}", c["read"]);
    println!("inserted    {}", c["inserted"]);
    println!("duplicates  {}", c["duplicates"]);
    println!("rejected    {}", c["rejected"]);
    if c["missing"].as_i64().unwrap_or(0) > 0 {
        println!("missing     {}  rows {}", c["missing"], s["missing_rows"]);
    }
    // Stored, but their domain's DNS lookup failed (ROWPIPE_CHECK_MAIL_DOMAIN).
    if c["unverified"].as_i64().unwrap_or(0) > 0 {
        println!(
            "unverified  {}  (stored; GET {})",
            c["unverified"],
            s["links"]["unverified"].as_str().unwrap_or("")
        );
    }
    if let Some(reasons) = c["rejected_by_reason"].as_object() {
        for (reason, n) in reasons {
            println!("  {reason:<22} {n}");
        }
    }
}

async fn rejects(api: ApiArgs, id: String, output: Option<PathBuf>) -> anyhow::Result<()> {
    let url = format!("{}/v1/uploads/{id}/rejects", api.url.trim_end_matches('/'));
    let resp = authed(&api, client()?.get(&url)).send().await?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", resp.status());
    }
    let text = resp.text().await?;
    match output {
        Some(path) => {
            tokio::fs::write(&path, text).await?;
            println!("rejected rows written to {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
