//! `rowpipe dead-letters list|replay`: what the consumers gave up on, and
//! sending it through the pipeline again once the cause is fixed. Talks to
//! Redis only; the consumers do the storing (see
//! [`rowpipe_core::stream::replay`]).

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use rowpipe_core::config::{StreamConfig, redact};
use rowpipe_core::stream::replay::{self, Letter, Selection};

#[derive(Subcommand, Debug)]
pub enum DeadLettersCommand {
    /// Print the dead letters, oldest first: one line each (tab-separated:
    /// letter id, cause, upload, row, error).
    List {
        #[command(flatten)]
        stream: StreamConfig,
        /// Only the letters of this upload.
        #[arg(long)]
        upload: Option<String>,
        /// Print each letter as a JSON line, with its fields and entry.
        #[arg(long)]
        json: bool,
    },
    /// Write dead-lettered rows back to the stream, to be processed again,
    /// and remove their letters.
    Replay {
        #[command(flatten)]
        stream: StreamConfig,
        /// Replay the letters of this upload.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        upload: Option<String>,
        /// Replay every letter.
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(command: DeadLettersCommand) -> anyhow::Result<()> {
    match command {
        DeadLettersCommand::List {
            stream,
            upload,
            json,
        } => {
            let mut con = connect(&stream).await?;
            let selection = upload.map_or(Selection::All, Selection::Upload);
            let n = replay::list(&mut con, &stream.dead_letter_stream(), &selection, |l| {
                if json {
                    println!("{}", as_json(l));
                } else {
                    println!("{}", as_line(l));
                }
            })
            .await?;
            eprintln!("{n} dead letter(s) in {}", stream.dead_letter_stream());
            Ok(())
        }
        DeadLettersCommand::Replay {
            stream,
            upload,
            all,
        } => {
            let selection = match (upload, all) {
                (Some(id), _) => Selection::Upload(id),
                (None, _) => Selection::All,
            };
            let mut con = connect(&stream).await?;
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} replayed {pos} dead letter(s)")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            let report = replay::replay(
                &mut con,
                &stream.shards(),
                &stream.dead_letter_stream(),
                &selection,
                |r| bar.set_position(r.replayed as u64),
            )
            .await?;
            bar.finish_and_clear();
            println!(
                "replayed {} dead letter(s) into {}; the consumers process them as new entries",
                report.replayed, stream.stream
            );
            if report.not_replayable > 0 {
                println!(
                    "{} letter(s) left in place: undecodable entries carry no row to replay (see `rowpipe dead-letters list`)",
                    report.not_replayable
                );
            }
            Ok(())
        }
    }
}

async fn connect(stream: &StreamConfig) -> anyhow::Result<rowpipe_core::stream::Connection> {
    stream.validate()?;
    stream
        .redis_target()
        .connect()
        .await
        .with_context(|| format!("connecting to {}", redact(&stream.redis_url)))
}

fn cause(l: &Letter) -> &'static str {
    l.cause.map_or("unknown", |c| c.code())
}

fn as_line(l: &Letter) -> String {
    let one_line = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    format!(
        "{}\t{}\t{}\t{}\t{}",
        l.id,
        cause(l),
        l.upload_id.as_deref().unwrap_or("-"),
        l.row_number.map_or("-".to_string(), |n| n.to_string()),
        one_line(&l.error)
    )
}

fn as_json(l: &Letter) -> serde_json::Value {
    serde_json::json!({
        "id": l.id,
        "source_id": l.source_id,
        "cause": cause(l),
        "error": l.error,
        "upload_id": l.upload_id,
        "row_number": l.row_number,
        "fields": l.fields,
        "replayable": l.entry.is_some(),
        "dead_lettered_by": l.dead_lettered_by,
    })
}
