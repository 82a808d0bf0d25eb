//! `masse watch [PATTERN] [--json]`.

use std::time::SystemTime;

use futures::StreamExt;
use masse::{Pattern, Registry, RegistryEvent};

use crate::cli::{Global, WatchArgs};
use crate::error::{CliError, Exit};
use crate::output::{format_rfc3339, notice, out_line, short_instance};
use crate::setup::{deadline, interrupted};

pub(crate) async fn run(g: &Global, args: WatchArgs) -> Result<Exit, CliError> {
    let ns = g.namespace()?;
    let pattern = Pattern::new(&args.pattern)?;
    let registry = g.registry().await?;
    // Reconciled unless asked otherwise: when the registry loses events (a
    // restart, a pruned log) the namespace is listed again and the changes
    // come out as ordinary lines, each once, never as a `resync` marker.
    // (The stream lives as long as the cache: keep it.)
    let cache = masse::CachingRegistry::new(registry.clone());
    let watched = if args.raw {
        registry.watch(&ns)
    } else {
        cache.watch(&ns)
    };
    let mut events = deadline(g.timeout, watched, "starting the watch").await??;
    notice(format!(
        "watching namespace {ns} for {pattern} (Ctrl-C to stop)"
    ));
    let stop = interrupted();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            () = &mut stop => return Ok(Exit::Ok),
            e = events.next() => e,
        };
        let event = match event {
            None => {
                notice("the registry ended the watch");
                return Ok(Exit::Ok);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the registry watch reported an error");
                continue;
            }
            Some(Ok(e)) => e,
        };
        if event.name().is_some_and(|n| !pattern.matches(n.as_str())) {
            continue;
        }
        let now = SystemTime::now();
        let line = if args.json {
            json_line(&event, now)
        } else {
            text_line(&event, now)
        };
        if !out_line(&line)? {
            return Ok(Exit::Ok);
        }
    }
}

/// The event's kind as printed: `joined`, `updated`, `left`, `expired`, `resync`.
fn kind(event: &RegistryEvent) -> &'static str {
    match event {
        RegistryEvent::Joined(_) => "joined",
        RegistryEvent::Updated(_) => "updated",
        RegistryEvent::Left { .. } => "left",
        RegistryEvent::Expired { .. } => "expired",
        RegistryEvent::Resync => "resync",
        _ => "unknown",
    }
}

/// `2025-11-25T13:40:00.123Z joined   billing-7 3f2a1b4c tcp://10.0.0.7:4100`
fn text_line(event: &RegistryEvent, at: SystemTime) -> String {
    let time = format_rfc3339(at);
    let mut line = format!("{time} {:<7}", kind(event));
    match event {
        RegistryEvent::Joined(r) | RegistryEvent::Updated(r) => {
            line.push_str(&format!(" {} {}", r.name, short_instance(r.instance)));
            let eps: Vec<String> = r.endpoints.iter().map(ToString::to_string).collect();
            if !eps.is_empty() {
                line.push(' ');
                line.push_str(&eps.join(","));
            }
        }
        RegistryEvent::Left { name, instance } | RegistryEvent::Expired { name, instance } => {
            line.push_str(&format!(" {name} {}", short_instance(*instance)));
        }
        RegistryEvent::Resync => {
            line.push_str(" events may have been lost; list again with `masse peers`");
        }
        _ => {}
    }
    line.trim_end().to_owned()
}

/// `{"time":"…","event":"joined","name":"…","instance":"…","record":{…}}`
fn json_line(event: &RegistryEvent, at: SystemTime) -> String {
    let mut v = serde_json::json!({
        "time": format_rfc3339(at),
        "event": kind(event),
    });
    if let Some(name) = event.name() {
        v["name"] = name.as_str().into();
    }
    if let Some(instance) = event.instance() {
        v["instance"] = instance.to_string().into();
    }
    if let RegistryEvent::Joined(r) | RegistryEvent::Updated(r) = event {
        v["record"] = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use masse::{InstanceId, PeerRecord};

    use super::*;

    #[test]
    fn lines_for_every_event() {
        let at = UNIX_EPOCH + Duration::from_millis(1_764_078_000_123);
        let instance = InstanceId::from_u128(0x3f2a_1b4c_u128 << 96);
        let record = PeerRecord::new(
            "prod".parse().unwrap(),
            "billing-7".parse().unwrap(),
            instance,
        )
        .with_endpoint("tcp://10.0.0.7:4100".parse().unwrap());
        let name = record.name.clone();
        assert_eq!(
            text_line(&RegistryEvent::Joined(record.clone()), at),
            "2025-11-25T13:40:00.123Z joined  billing-7 3f2a1b4c tcp://10.0.0.7:4100"
        );
        assert_eq!(
            text_line(
                &RegistryEvent::Expired {
                    name: name.clone(),
                    instance
                },
                at
            ),
            "2025-11-25T13:40:00.123Z expired billing-7 3f2a1b4c"
        );
        assert!(text_line(&RegistryEvent::Resync, at).contains("resync  events may"));

        let v: serde_json::Value =
            serde_json::from_str(&json_line(&RegistryEvent::Updated(record), at)).unwrap();
        assert_eq!(v["event"], "updated");
        assert_eq!(v["name"], "billing-7");
        assert_eq!(v["instance"], instance.to_string());
        assert_eq!(v["record"]["endpoints"][0], "tcp://10.0.0.7:4100");
        assert_eq!(v["time"], "2025-11-25T13:40:00.123Z");
        let v: serde_json::Value =
            serde_json::from_str(&json_line(&RegistryEvent::Left { name, instance }, at)).unwrap();
        assert_eq!(v["event"], "left");
        assert!(v.get("record").is_none());
    }
}
