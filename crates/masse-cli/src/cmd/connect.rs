//! `masse connect TARGET [--service S]`.

use crate::cli::{ConnectArgs, Global};
use crate::error::{CliError, Exit};
use crate::pipe::{IDLE_AFTER_PEER_CLOSE, Input, pipe};
use crate::setup::{Target, deadline, interrupted};

pub(crate) async fn run(g: &Global, args: ConnectArgs) -> Result<Exit, CliError> {
    let target = Target::parse(&args.target)?;
    let ns = target.namespace(g)?;
    let service = target.service(args.service.as_deref())?;
    let name = g.join_name()?;
    let registry = g.registry().await?;
    let node = g.start_node(&name, &ns, registry, &[], &[]).await?;
    let result = async {
        let open = async {
            let stream = match &service {
                Some(s) => node.connect_service(target.name.as_str(), s).await,
                None => node.connect(target.name.as_str()).await,
            }?;
            // Report a refusal before reading stdin.
            stream.established().await.map(|()| stream)
        };
        let what = format!("opening a stream to {}", target.name);
        let stream = tokio::select! {
            s = deadline(g.timeout, open, &what) => s??,
            () = interrupted() => return Ok(Exit::Interrupted),
        };
        tracing::info!(peer = %target.name, instance = %stream.peer_instance(), "stream open");
        let mut input = Input::stdin();
        tokio::select! {
            r = pipe(stream, &mut input, tokio::io::stdout(), IDLE_AFTER_PEER_CLOSE) => {
                let piped = r.map_err(|e| CliError::from(e).context(format!("stream to {}", target.name)))?;
                tracing::info!(bytes_in = piped.bytes_in, bytes_out = piped.bytes_out, "stream closed");
                Ok(Exit::Ok)
            }
            () = interrupted() => Ok(Exit::Interrupted),
        }
    }
    .await;
    g.stop_node(&node).await;
    result
}
