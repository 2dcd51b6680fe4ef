//! The values the session API hands in and out: what a login knows ([`NewSession`]), a
//! session as a service sees it ([`Session`]), the secrets handed to the client once
//! ([`Secret`]), and the answers of validation, refresh and analytics.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The kind of device a session was created on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DeviceKind {
    /// A desktop or laptop browser or app.
    Desktop,
    /// A phone.
    Mobile,
    /// A tablet.
    Tablet,
    /// Anything else.
    #[default]
    Other,
}

impl DeviceKind {
    /// The lowercase name, as used in counts.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Desktop => "desktop",
            DeviceKind::Mobile => "mobile",
            DeviceKind::Tablet => "tablet",
            DeviceKind::Other => "other",
        }
    }
}

/// The device a session was created on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Its kind.
    pub kind: DeviceKind,
    /// A display name, e.g. "Firefox on Linux".
    pub name: String,
}

/// What a login knows about the new session.
///
/// # Examples
///
/// ```
/// use tierkit::session::{DeviceKind, NewSession};
///
/// let new = NewSession::new("user-42")
///     .user_agent("Mozilla/5.0 (X11; Linux x86_64)")
///     .ip("203.0.113.7")
///     .device(DeviceKind::Desktop, "Firefox on Linux")
///     .access_token("eyJhbGciOi...")
///     .meta("tenant", "acme");
/// # let _ = new;
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct NewSession {
    pub(super) user_id: String,
    pub(super) user_agent: String,
    pub(super) ip: String,
    pub(super) device: Device,
    pub(super) access_token: Option<String>,
    pub(super) metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("user_id", &self.user_id)
            .field("user_agent", &self.user_agent)
            .field("ip", &self.ip)
            .field("device", &self.device)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl NewSession {
    /// A session for `user_id`.
    pub fn new(user_id: impl Into<String>) -> Self {
        NewSession {
            user_id: user_id.into(),
            ..NewSession::default()
        }
    }

    /// The client's user agent.
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    /// The client's IP address.
    pub fn ip(mut self, ip: impl Into<String>) -> Self {
        self.ip = ip.into();
        self
    }

    /// The device.
    pub fn device(mut self, kind: DeviceKind, name: impl Into<String>) -> Self {
        self.device = Device {
            kind,
            name: name.into(),
        };
        self
    }

    /// An access token (e.g. a JWT) to bind to the session: only its hash is kept, and
    /// [`Sessions::validate_access`](super::Sessions::validate_access) checks it.
    pub fn access_token(mut self, token: impl Into<String>) -> Self {
        self.access_token = Some(token.into());
        self
    }

    /// Application metadata.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// A session as a service sees it. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Session {
    /// A public handle (the SHA-256 of the session id): safe to show, and what
    /// [`Sessions::revoke_handle`](super::Sessions::revoke_handle) takes to log out one device
    /// from a list.
    pub handle: String,
    /// The user.
    pub user_id: String,
    /// The device.
    pub device: Device,
    /// The user agent at login.
    pub user_agent: String,
    /// The IP address at login.
    pub ip: String,
    /// Application metadata.
    pub metadata: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it was last used (to within `touch_interval`).
    pub last_seen: SystemTime,
    /// When it ends if not used again.
    pub expires_at: SystemTime,
}

/// A secret handed to the client once: the session id or a refresh token.
///
/// `Debug` never shows it; `==` compares in constant time (no early exit at the first
/// differing byte, so timing tells nothing about how much of a guess was right); and its
/// memory is wiped when it drops (each clone's too). What a service copies out of
/// [`expose`](Self::expose) is the service's to look after.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tierkit::Result<()> {
/// let sessions = tierkit::Tierkit::embedded().sessions().build()?;
/// let created = sessions.create(tierkit::session::NewSession::new("user-42")).await?;
/// let id = created.session_id.clone();
/// assert!(id == created.session_id);
/// assert!(created.session_id != created.refresh_token);
/// assert_eq!(format!("{id:?}"), "Secret(<redacted>)");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Secret(pub(super) String);

impl Secret {
    /// The secret itself, to send to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        // Secrets of one kind have one length, so only the bytes could leak, and they do not.
        subtle::ConstantTimeEq::ct_eq(self.0.as_bytes(), other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl zeroize::ZeroizeOnDrop for Secret {}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A new session.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Created {
    /// The session id for the client (cookie or header).
    pub session_id: Secret,
    /// The first refresh token.
    pub refresh_token: Secret,
    /// The session.
    pub session: Session,
}

/// The answer of [`Sessions::validate`](super::Sessions::validate).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Validation {
    /// A live session.
    Valid(Session),
    /// Unknown, expired or revoked.
    Invalid,
    /// Redis is down and this instance has no recent copy: fall back to stateless checks.
    Unavailable,
    /// Redis is down, and the store's [stateless
    /// verifier](super::SessionsBuilder::stateless_verifier) vouched for the access token:
    /// degraded, since nothing that happened to the session after the token was issued (a
    /// revocation on another instance, an expiry) can be seen. Only
    /// [`validate_access`](super::Sessions::validate_access) answers this.
    Stateless {
        /// The user the verifier says the token was issued to.
        user_id: String,
    },
}

impl Validation {
    /// The session, when valid.
    pub fn session(&self) -> Option<&Session> {
        match self {
            Validation::Valid(s) => Some(s),
            _ => None,
        }
    }
}

/// Checks an access token without Redis: the "JWT-only" fallback of
/// [`Sessions::validate_access`](super::Sessions::validate_access) while Redis is down. Any
/// `Fn(session_id, access_token) -> Option<user_id>` is one.
///
/// Return the user only for a token that is genuine (its signature checks), unexpired, and
/// issued for this `session_id`; `None` for anything else.
pub trait StatelessVerifier: Send + Sync + 'static {
    /// The user `access_token` was issued to for `session_id`, if it holds.
    fn verify(&self, session_id: &str, access_token: &str) -> Option<String>;
}

impl<F> StatelessVerifier for F
where
    F: Fn(&str, &str) -> Option<String> + Send + Sync + 'static,
{
    fn verify(&self, session_id: &str, access_token: &str) -> Option<String> {
        self(session_id, access_token)
    }
}

/// The answer of [`Sessions::refresh`](super::Sessions::refresh).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Refresh {
    /// The presented token is retired; use this one from now on.
    Rotated {
        /// The new refresh token.
        refresh_token: Secret,
        /// The session.
        session: Box<Session>,
    },
    /// Unknown token, or its session ended.
    Invalid,
    /// A retired token was presented again: the session is revoked (token theft is the
    /// likely cause).
    Reused,
}

/// Session analytics. Activity counters are this instance's since it started; the active
/// counts are global (kept in Redis, or in memory when embedded) and catch up with sessions
/// that simply expired when a list or the sweep finds them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SessionStats {
    /// Sessions created here.
    pub created: u64,
    /// Successful validations here (local copies included).
    pub validated: u64,
    /// Validations answered from the local copy while Redis was down.
    pub validated_locally: u64,
    /// Refresh rotations here.
    pub refreshed: u64,
    /// Sessions revoked here (reuse detection included).
    pub revoked: u64,
    /// Expired sessions found here (by validation, listing or sweep).
    pub expired: u64,
    /// Active sessions, all users.
    pub active: i64,
    /// Active sessions per device kind.
    pub by_device: BTreeMap<String, i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_and_are_wiped_on_drop() {
        let a = Secret("s1.abcdef".to_owned());
        assert!(a == a.clone());
        assert!(a != Secret("s1.abcdeg".to_owned()));
        assert!(a != Secret("s1.abcde".to_owned()));
        assert!(a != Secret(String::new()));
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        wiped_on_drop(&a);
        assert!(!format!("{a:?}").contains("abc"));
    }
}
