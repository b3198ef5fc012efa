//! `signals dlq list|show|retry|drop`: the one dead-letter model, whatever queue the job came from.

use crate::app::{open_queue, open_store, StoreSpec};
use anyhow::Context;
use clap::Subcommand;
use signals_shared::ops::{drop::drop_dead_letter, repair, retry::retry_dead_letter};
use signals_shared::ports::DeadLetter;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

/// What to do with dead letters.
#[derive(Subcommand)]
pub enum DlqAction {
    /// List dead letters (open ones unless --all).
    List {
        /// Include retried and dropped ones.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: Filter,
    },
    /// Show one dead letter in full (message, error, response body, who resolved it).
    Show {
        /// Dead letter id.
        id: i64,
    },
    /// Put dead-lettered jobs back on the queue with fresh attempts.
    Retry {
        /// Dead letter ids.
        ids: Vec<i64>,
        /// Retry every open dead letter that matches the filters.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: Filter,
        /// Who is retrying (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Move the messages of a queue's own dead-letter queue (SQS redrive: messages no function
    /// could decode) into the store, where `dlq list|show|retry|drop` handle them.
    Import(ImportFrom),
    /// Give up on dead letters: the run moves on (or is abandoned), recorded with who did it.
    Drop {
        /// Dead letter ids.
        ids: Vec<i64>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Who is dropping (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Re-send exactly the affected keys with the data source's next run.
        #[arg(long)]
        repair: bool,
        /// Leave the destination behind without asking about a repair.
        #[arg(long, conflicts_with = "repair")]
        no_repair: bool,
    },
}

/// Where `dlq import` reads from.
#[derive(clap::Args)]
pub struct ImportFrom {
    /// The SQS dead-letter queue: its URL, or its name (then resolved in the configured region).
    #[arg(long)]
    sqs: String,
    /// Stop after this many messages.
    #[arg(long, default_value_t = 10_000)]
    max: usize,
}

/// Filters for list and retry.
#[derive(clap::Args, Default)]
pub struct Filter {
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this data source.
    #[arg(long)]
    source: Option<String>,
    /// Only dead letters older than this many seconds.
    #[arg(long)]
    older_than_secs: Option<i64>,
    /// Only this failure class: 4xx, 5xx, transport or other.
    #[arg(long)]
    class: Option<String>,
}

/// The failure class of a dead letter, from its error: an HTTP status class, a transport failure,
/// or anything else (source, config, store).
pub fn class_of(error: &str) -> &'static str {
    // The stage errors say "destination answered NNN …" and "destination rejected … with NNN: …".
    let after = |marker: &str| error.rfind(marker).map(|i| &error[i + marker.len()..]);
    let status = after("destination answered ")
        .or_else(|| {
            error
                .starts_with("destination rejected")
                .then(|| after(" with "))
                .flatten()
        })
        .and_then(|rest| rest.get(..3))
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()));
    match status {
        Some(s) if s.starts_with('4') => "4xx",
        Some(_) => "5xx",
        None if error.starts_with("push to ") => "transport",
        None => "other",
    }
}

impl Filter {
    fn keeps(&self, d: &DeadLetter) -> bool {
        let age = (chrono::Utc::now() - d.created_at).num_seconds();
        self.tenant.as_deref().is_none_or(|t| d.tenant.as_deref() == Some(t))
            && self.source.as_deref().is_none_or(|s| d.source.as_deref() == Some(s))
            && self.older_than_secs.is_none_or(|s| age >= s)
            && self.class.as_deref().is_none_or(|c| class_of(&d.error) == c)
    }
}

fn who(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Asks on the terminal; without one, only `--yes` may drop.
fn confirm(question: &str) -> anyhow::Result<bool> {
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "refusing to drop without confirmation: pass --yes"
    );
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Moves SQS dead-letter-queue messages into the store: each is recorded (with its receive
/// count) before it is deleted from the queue, so a crash between the two imports it twice —
/// the store keeps one dead letter per message id — and never loses it.
async fn import(store: &dyn signals_shared::ports::Store, from: &ImportFrom) -> anyhow::Result<()> {
    use signals_shared::sqs::{client, SqsQueue};
    let queue = SqsQueue::with_client(client().await);
    let url = if from.sqs.starts_with("https://") || from.sqs.starts_with("http://") {
        from.sqs.clone()
    } else {
        queue.url_of(&from.sqs).await?
    };
    let mut imported = 0;
    while imported < from.max {
        let batch = queue
            .receive_from(
                &url,
                from.max - imported,
                Duration::from_secs(60),
                Duration::from_secs(1),
            )
            .await?;
        if batch.is_empty() {
            break;
        }
        for m in batch {
            let job = signals_shared::domain::job::Job::decode(m.body.as_bytes());
            let error = match &job {
                Ok(_) => "moved to the SQS dead-letter queue by its redrive policy".to_owned(),
                Err(e) => format!("moved to the SQS dead-letter queue: {e}"),
            };
            let id = signals_shared::hosts::record_dead_letter(store, job.as_ref().ok(), &m.body, &error, m.attempts)
                .await?;
            queue.delete(&m).await?;
            imported += 1;
            println!("dead letter {id}: imported from {url}");
        }
    }
    println!("{imported} messages imported");
    Ok(())
}

/// Runs a dlq action.
pub async fn dlq(spec: &StoreSpec, action: DlqAction) -> anyhow::Result<()> {
    let store = open_store(spec).await?;
    match action {
        DlqAction::List { all, filter } => {
            let list = store.dead_letters(!all).await?;
            println!(
                "{:>5} {:<8} {:<12} {:<16} {:<8} {:<9} {:>8}  error",
                "id", "state", "tenant", "source", "stage", "class", "attempts"
            );
            for d in list.iter().filter(|d| filter.keeps(d)) {
                println!(
                    "{:>5} {:<8} {:<12} {:<16} {:<8} {:<9} {:>8}  {}",
                    d.id,
                    d.state,
                    d.tenant.as_deref().unwrap_or("-"),
                    d.source.as_deref().unwrap_or("-"),
                    d.stage,
                    class_of(&d.error),
                    d.attempts,
                    d.error.chars().take(120).collect::<String>()
                );
            }
        }
        DlqAction::Show { id } => {
            let d = store
                .dead_letter_by_id(id)
                .await?
                .with_context(|| format!("no dead letter {id}"))?;
            println!("{}", serde_json::to_string_pretty(&d)?);
        }
        DlqAction::Import(from) => import(store.as_ref(), &from).await?,
        DlqAction::Retry { ids, all, filter, by } => {
            let queue = open_queue(spec, &store).await?;
            let ids: Vec<i64> = if all {
                store
                    .dead_letters(true)
                    .await?
                    .into_iter()
                    .filter(|d| filter.keeps(d))
                    .map(|d| d.id)
                    .collect()
            } else {
                ids
            };
            anyhow::ensure!(!ids.is_empty() || all, "name dead letter ids or pass --all");
            let by = who(by);
            // Oldest first, so a data source's batches go back in the order they failed.
            for id in ids.into_iter().rev() {
                let stage = retry_dead_letter(store.as_ref(), queue.as_ref(), id, &by).await?;
                println!("dead letter {id}: {stage} job re-queued");
            }
        }
        DlqAction::Drop {
            ids,
            yes,
            by,
            repair: want_repair,
            no_repair,
        } => {
            anyhow::ensure!(!ids.is_empty(), "name the dead letter ids to drop");
            let by = who(by);
            for id in ids {
                if !yes
                    && !confirm(&format!(
                        "Drop dead letter {id}? Its changes will not reach the destination."
                    ))?
                {
                    println!("dead letter {id}: kept");
                    continue;
                }
                let dropped = drop_dead_letter(store.as_ref(), id, &by).await?;
                println!("dead letter {id}: dropped by {by}; {}", dropped.effect);
                let Some((tenant, source)) = dropped.source.filter(|_| !dropped.keys.is_empty()) else {
                    continue;
                };
                let n = dropped.keys.len();
                let go = want_repair
                    || (!no_repair
                        && !yes
                        && confirm(&format!(
                            "Re-send those {n} keys of {tenant}/{source} with its next run?"
                        ))?);
                if go {
                    repair::schedule(store.as_ref(), &tenant, &source, dropped.keys).await?;
                    println!("repair scheduled: the next run of {tenant}/{source} re-sends {n} keys");
                } else {
                    println!("the destination is knowingly behind by {n} keys of {tenant}/{source} (`signals verify --repair` fixes it)");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::class_of;

    #[test]
    fn failure_classes() {
        assert_eq!(class_of("destination rejected batch r.1-500 with 400: bad"), "4xx");
        assert_eq!(
            class_of("destination answered 429 for batch r.501-999: slow down"),
            "4xx"
        );
        assert_eq!(class_of("destination answered 503 for batch r.1-5: x"), "5xx");
        assert_eq!(class_of("push to http://x/v1/batches failed: timed out"), "transport");
        assert_eq!(class_of("cannot connect to source `db`: no database file"), "other");
    }
}
