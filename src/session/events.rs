//! Session events for audit logs: every creation, refresh, revocation, expiry and detected
//! token reuse, as a stream any number of subscribers read ([`Sessions::events`]).

use serde::Serialize;
use tokio::sync::broadcast;

use super::sessions::Sessions;
use super::types::DeviceKind;

/// How many events a subscriber may fall behind by before it loses the oldest
/// ([`broadcast::error::RecvError::Lagged`] says how many).
const BACKLOG: usize = 4_096;

/// Something that happened to a session on this instance. `handle` is the session's public
/// handle ([`Session::handle`](super::Session::handle)), never its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
#[non_exhaustive]
pub enum SessionEvent {
    /// A login made a session.
    #[serde(rename_all = "camelCase")]
    Created {
        /// The user.
        user_id: String,
        /// The new session.
        handle: String,
        /// Its device kind.
        device: DeviceKind,
    },
    /// A refresh token was rotated.
    #[serde(rename_all = "camelCase")]
    Refreshed {
        /// The user.
        user_id: String,
        /// The session.
        handle: String,
    },
    /// A session was ended before its time.
    #[serde(rename_all = "camelCase")]
    Revoked {
        /// The user.
        user_id: String,
        /// The session.
        handle: String,
        /// Why.
        reason: RevokeReason,
    },
    /// A session's time ran out, seen as its record or index entry was taken away.
    #[serde(rename_all = "camelCase")]
    Expired {
        /// The session.
        handle: String,
    },
    /// The session got a new id ([`Sessions::rotate_id`]); the old handle is gone.
    #[serde(rename_all = "camelCase")]
    IdRotated {
        /// The user.
        user_id: String,
        /// The handle before.
        old_handle: String,
        /// The handle from now on.
        new_handle: String,
    },
    /// A retired refresh token was presented again: a stolen token, most likely. The session
    /// is revoked ([`RevokeReason::Reuse`] follows).
    #[serde(rename_all = "camelCase")]
    ReuseDetected {
        /// The user.
        user_id: String,
        /// The session.
        handle: String,
    },
}

/// Why a session was revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum RevokeReason {
    /// A revoke call (logout, "log out everywhere", an administrator).
    Revoked,
    /// A login past [`max_sessions_per_user`](super::SessionsBuilder::max_sessions_per_user)
    /// evicted it.
    Evicted,
    /// Its refresh token was reused.
    Reuse,
}

/// The sending side, held by the store.
pub(super) struct Events(broadcast::Sender<SessionEvent>);

impl Events {
    pub(super) fn new() -> Self {
        Events(broadcast::channel(BACKLOG).0)
    }

    /// Sends `event` to the subscribers; builds nothing when there are none.
    pub(super) fn emit(&self, event: impl FnOnce() -> SessionEvent) {
        if self.0.receiver_count() > 0 {
            let _ = self.0.send(event());
        }
    }
}

impl Sessions {
    /// A stream of this instance's session events, from now on, for audit logs. A subscriber
    /// that falls more than 4,096 events behind loses the oldest (its next `recv` says how
    /// many). Events of other instances are theirs to report.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierkit::Result<()> {
    /// use tierkit::session::{NewSession, SessionEvent};
    ///
    /// let kit = tierkit::Tierkit::embedded();
    /// let sessions = kit.sessions().build()?;
    /// let mut events = sessions.events();
    /// let login = sessions.create(NewSession::new("user-7")).await?;
    /// let created = events.recv().await.expect("an event");
    /// assert!(matches!(created, SessionEvent::Created { ref user_id, .. } if user_id == "user-7"));
    /// # drop(login);
    /// # Ok(()) }
    /// ```
    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.0.events.0.subscribe()
    }
}
