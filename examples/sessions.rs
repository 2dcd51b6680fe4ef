//! Sessions: a login on two devices, "where you are logged in", a refresh-token rotation that
//! catches a replayed token, and "log out everywhere else". Asserts what it prints.
//!
//! ```sh
//! cargo run --example sessions                                  # embedded: no Redis
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example sessions # sessions kept in Redis
//! ```

use std::time::Duration;

use tierkit::session::{DeviceKind, NewSession, Refresh, Validation};
use tierkit::Tierkit;

#[tokio::main(flavor = "current_thread")]
async fn main() -> tierkit::Result<()> {
    let kit = Tierkit::from_env()?;
    kit.ready(Duration::from_secs(2)).await;
    let sessions = kit
        .sessions()
        .idle_timeout(Duration::from_secs(30 * 60)) // sliding: each validation extends it
        .max_lifetime(Duration::from_secs(7 * 24 * 3600)) // absolute: never past a week
        // A replaced refresh token stays good this long (two tabs refreshing at once).
        .refresh_grace(Duration::from_millis(200))
        .build()?;
    let user = format!("alice-{}", std::process::id()); // a fresh user on a shared Redis

    // Logins on two devices. The ids and tokens are secrets: tierkit keeps only their hashes.
    let laptop = sessions
        .create(
            NewSession::new(&user)
                .device(DeviceKind::Desktop, "Firefox on Linux")
                .user_agent("Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0")
                .ip("203.0.113.7"),
        )
        .await?;
    let phone = sessions
        .create(
            NewSession::new(&user)
                .device(DeviceKind::Mobile, "iPhone")
                .ip("198.51.100.23"),
        )
        .await?;

    // Each request validates its session id.
    let Validation::Valid(session) = sessions.validate(laptop.session_id.expose()).await else {
        panic!("a session just created is valid");
    };
    println!(
        "{} is logged in on {}",
        session.user_id, session.device.name
    );

    // "Where you are logged in".
    let listed = sessions.list(&user).await?;
    for s in &listed {
        println!("  {:<16} from {:<14} ({})", s.device.name, s.ip, s.handle);
    }
    assert_eq!(listed.len(), 2);

    // The phone refreshes: it gets a new refresh token and the old one is retired. A thief
    // replaying the old one revokes the session.
    let rotated = sessions.refresh(phone.refresh_token.expose()).await?;
    assert!(matches!(rotated, Refresh::Rotated { .. }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replay = sessions.refresh(phone.refresh_token.expose()).await?;
    println!("the retired refresh token replayed after its grace: {replay:?}");
    assert!(matches!(replay, Refresh::Reused));
    let phone_now = sessions.validate(phone.session_id.expose()).await;
    println!("so the phone's session is revoked: {phone_now:?}");
    assert_eq!(phone_now, Validation::Invalid);

    // "Log out everywhere else", from the laptop (a tablet logged in meanwhile).
    sessions
        .create(NewSession::new(&user).device(DeviceKind::Tablet, "iPad"))
        .await?;
    let revoked = sessions.revoke_others(laptop.session_id.expose()).await?;
    let left = sessions.list(&user).await?;
    println!("revoked {revoked} other session(s); {} left", left.len());
    assert_eq!((revoked, left.len()), (1, 1));
    assert_eq!(left[0].device.name, "Firefox on Linux");

    let stats = sessions.stats().await?;
    println!(
        "created {}, validated {}, refreshed {}, revoked {}",
        stats.created, stats.validated, stats.refreshed, stats.revoked
    );
    sessions.revoke_all(&user).await?;
    Ok(())
}
