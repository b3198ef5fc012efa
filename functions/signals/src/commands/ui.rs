//! `signals ui --listen ADDR`: serves the operations page until SIGINT/SIGTERM.

use crate::app::{context, open_queue, open_store, StoreSpec};
use anyhow::Context;
use clap::Args;
use signals_shared::domain::secret_ref::SecretRef;

/// Options of `signals ui`.
#[derive(Args)]
pub struct UiArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: String,
    /// Secret reference (`env:NAME`, `file:PATH`, `aws-sm:…`) to the token that allows retrying
    /// dead letters from the page; without it the page is read-only.
    #[arg(long)]
    pub operator_token: Option<String>,
}

/// Serves the page.
pub async fn ui(store: &StoreSpec, args: UiArgs) -> anyhow::Result<()> {
    let token = match args.operator_token {
        Some(r) => {
            let r = SecretRef::try_from(r).map_err(|e| anyhow::anyhow!("--operator-token: {e}"))?;
            // Fail at start, not at the first click, when the reference does not resolve.
            signals_shared::secrets::resolve(&r).map_err(|e| anyhow::anyhow!("--operator-token: {e}"))?;
            Some(r)
        }
        None => None,
    };
    let spec = store;
    let store = open_store(spec).await?;
    let queue = open_queue(spec, &store).await?;
    let ctx = context(store.clone(), None, signals_shared::ctx::DEFAULT_RETRY);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!(
        "operations page on http://{} ({})",
        listener.local_addr()?,
        if token.is_some() {
            "retry allowed with the operator token"
        } else {
            "read-only"
        }
    );
    let app = crate::ui::router(crate::ui::UiState {
        store,
        queue,
        ctx,
        token,
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(super::run::shutdown_signal())
        .await?;
    Ok(())
}
