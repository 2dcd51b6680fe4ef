//! `tierkit sessions list|revoke USER`: through the library's session store, so user names
//! are keyed and records opened exactly as the service does (TIERKIT_SESSION_NAME_KEY,
//! TIERKIT_ENCRYPTION_KEYS).

use std::fmt::Write;
use std::time::Duration;

use serde_json::json;
use tierkit::session::{Session, Sessions};
use tierkit::Tierkit;

use crate::args::{SessionOpts, SessionsCmd};
use crate::output::{self, Failure, Report};

fn store(kit: &Tierkit, opts: &SessionOpts) -> Result<Sessions, Failure> {
    kit.sessions()
        .idle_timeout(opts.idle_timeout)
        .max_lifetime(opts.max_lifetime)
        // A one-shot process: its background sweep never needs to run.
        .sweep(Duration::from_secs(30 * 86_400), 1)
        .build()
        .map_err(Failure::from)
}

fn session_json(s: &Session) -> serde_json::Value {
    json!({
        "handle": s.handle,
        "userId": s.user_id,
        "device": { "kind": s.device.kind.as_str(), "name": s.device.name },
        "userAgent": s.user_agent,
        "ip": s.ip,
        "metadata": s.metadata,
        "createdAtMs": output::millis(s.created_at),
        "lastSeenMs": output::millis(s.last_seen),
        "expiresAtMs": output::millis(s.expires_at),
    })
}

pub async fn run(kit: &Tierkit, cmd: SessionsCmd) -> Result<Report, Failure> {
    match cmd {
        SessionsCmd::List { user, opts } => {
            let sessions = store(kit, &opts)?.list(&user).await?;
            let mut text = String::new();
            if sessions.is_empty() {
                let _ = writeln!(text, "no live session for {user:?}");
            }
            let now = output::millis(std::time::SystemTime::now());
            for s in &sessions {
                let _ = writeln!(
                    text,
                    "{}  {} {:?}  ip {}  created {} s ago, seen {} s ago, ends in {} s",
                    s.handle,
                    s.device.kind.as_str(),
                    s.device.name,
                    if s.ip.is_empty() { "-" } else { &s.ip },
                    now.saturating_sub(output::millis(s.created_at)) / 1000,
                    now.saturating_sub(output::millis(s.last_seen)) / 1000,
                    output::millis(s.expires_at).saturating_sub(now) / 1000,
                );
            }
            let json = json!({
                "user": user,
                "sessions": sessions.iter().map(session_json).collect::<Vec<_>>(),
            });
            Ok(Report::new(json, text))
        }
        SessionsCmd::Revoke {
            user,
            session,
            all,
            opts,
        } => {
            let store = store(kit, &opts)?;
            let revoked = match (session, all) {
                (Some(handle), _) => {
                    if !store.revoke_handle(&user, &handle).await? {
                        return Err(Failure::new(format!(
                            "no session {handle:?} of user {user:?} (`tierkit sessions list {user}` shows the handles)"
                        )));
                    }
                    1
                }
                (None, true) => store.revoke_all(&user).await?,
                (None, false) => return Err(Failure::new("give --session HANDLE or --all")),
            };
            let json = json!({ "user": user, "revoked": revoked });
            Ok(Report::new(
                json,
                format!("revoked {revoked} session(s) of {user:?}\n"),
            ))
        }
    }
}
