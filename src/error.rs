//! The one error type of tierkit.

use std::time::Duration;

/// Result alias used across tierkit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in tierkit.
///
/// Every message says what went wrong and, where there is one, what to do about it.
///
/// # Examples
///
/// ```
/// use tierkit::{Config, Error};
///
/// let err = Config::builder().op_timeout(std::time::Duration::ZERO).build().unwrap_err();
/// assert!(matches!(err, Error::Config { .. }));
/// assert!(err.to_string().contains("op_timeout"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid. `field` names the setting or environment variable.
    #[error("invalid configuration: {field}: {problem}")]
    Config {
        /// The builder setting or environment variable that holds the bad value.
        field: String,
        /// What is wrong with it and what is accepted instead.
        problem: String,
    },

    /// An argument of a call is invalid (an empty tag, a zero count, a weight above the
    /// limit, ...). `what` names the argument; nothing was done.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierkit::Result<()> {
    /// let kit = tierkit::Tierkit::embedded();
    /// let ns = kit.namespace::<String>("n").build()?;
    /// let err = ns.invalidate_tag("").await.unwrap_err();
    /// assert!(matches!(err, tierkit::Error::InvalidInput { .. }));
    /// # Ok(()) }
    /// ```
    #[error("invalid argument: {what}: {problem}")]
    InvalidInput {
        /// The argument that holds the bad value.
        what: String,
        /// What is wrong with it and what is accepted instead.
        problem: String,
    },

    /// An invariant of tierkit itself did not hold: a bug, not a mistake of the caller. Please
    /// report it with the message.
    #[error("internal error (a tierkit bug, please report it): {0}")]
    Internal(&'static str),

    /// Redis is known to be down (the health monitor says so, or it was forced down), so the
    /// call was not sent. Serve from the in-process tier or retry once health is back `Up`.
    #[error(
        "Redis is unavailable (health is Down); the call was not sent, retry when health is Up"
    )]
    Unavailable,

    /// Redis is configured but tierkit was built outside a tokio runtime, so it cannot start its
    /// connection and health probe.
    #[error("no tokio runtime: build tierkit with Redis from inside a tokio runtime (e.g. in #[tokio::main])")]
    NoRuntime,

    /// A Redis call did not answer within the per-operation timeout.
    #[error("Redis did not answer within {0:?}; raise op_timeout if the server is just slow")]
    Timeout(Duration),

    /// Redis answered with an error, or the connection failed.
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),

    /// A value could not be encoded for storage.
    #[error("could not encode value: {0}")]
    Encode(String),

    /// Stored bytes could not be decoded; see [`DecodeError`] for why.
    #[error("could not decode stored value: {0}")]
    Decode(#[from] DecodeError),

    /// A `get_or_set` loader failed. Every caller waiting on the same key gets this same error;
    /// nothing is cached.
    #[error("loader failed: {0}")]
    Loader(std::sync::Arc<dyn std::error::Error + Send + Sync>),

    /// A load ran past its namespace's (or the call's) hard timeout and was dropped, and no
    /// stale copy was at hand to serve instead. Nothing is cached.
    #[error("the loader did not finish within the hard timeout of {0:?}; raise hard_timeout or make the loader faster")]
    LoaderTimeout(std::time::Duration),

    /// Concurrent updates of the same record kept winning over this one; retry.
    #[error("conflict: {0}; retry the call")]
    Conflict(String),

    /// A value is larger than the configured maximum and was refused.
    #[error("value of {size} bytes exceeds the maximum of {max} bytes; raise max_value_size or store less")]
    TooLarge {
        /// The size of the refused value in bytes.
        size: usize,
        /// The configured maximum in bytes.
        max: usize,
    },

    /// A user already has `max` sessions and the store is set to refuse more
    /// ([`SessionsBuilder::max_sessions_per_user`](crate::session::SessionsBuilder::max_sessions_per_user)).
    #[error("the user already has {max} sessions, the most allowed; revoke one first")]
    SessionLimit {
        /// The limit.
        max: u32,
    },

    /// A write reached the primary but fewer replicas than required acknowledged it in time
    /// (see [`SessionsBuilder::replicated_writes`](crate::session::SessionsBuilder::replicated_writes)):
    /// it is done on the primary, but a failover now could lose it.
    #[error("write acknowledged by {acknowledged} of {required} required replicas in time; a failover could lose it")]
    NotReplicated {
        /// Replicas that acknowledged the write.
        acknowledged: u32,
        /// Replicas required.
        required: u32,
    },
}

/// Why stored bytes could not be decoded.
///
/// Decoding never panics: truncated, foreign, corrupt or newer-format bytes each give one of
/// these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end before the envelope header or body is complete.
    #[error("truncated: {0} bytes is shorter than the envelope header")]
    Truncated(usize),
    /// The bytes do not start with tierkit's magic; something else wrote this key.
    #[error("foreign bytes: no tierkit envelope magic; another writer uses this key")]
    Foreign,
    /// The envelope was written by a newer tierkit format than this build understands.
    #[error("format version {0} is newer than this build understands; upgrade tierkit")]
    UnsupportedVersion(u8),
    /// The header carries flags this build does not know.
    #[error("unknown envelope flags {0:#04x}")]
    UnknownFlags(u8),
    /// The body is not valid for the expected type, or fails to decompress.
    #[error("corrupt body: {0}")]
    Corrupt(String),
    /// The envelope is encrypted, and was read without the keys: read it through a namespace
    /// built with `encrypted()`.
    #[error("sealed: the value is encrypted; read it through an encrypted namespace")]
    Sealed,
    /// A plain envelope where only encrypted ones are accepted; never read as plaintext.
    #[error("not sealed: a plain value where values must be encrypted; refused")]
    NotSealed,
    /// Sealed bytes that open under no listed key: tampered with, copied from another key, or
    /// sealed with a key no longer listed.
    #[error("does not decrypt with any listed key (tampered with, moved from another key, or sealed with a dropped key)")]
    Undecryptable,
}

impl Error {
    pub(crate) fn config(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::InvalidInput {
            what: what.into(),
            problem: problem.into(),
        }
    }

    /// Turns the shared error moka hands every waiter of a coalesced load back into an owned
    /// one. Only loader, encode, size and internal errors come out of a load.
    pub(crate) fn from_shared(shared: std::sync::Arc<Error>) -> Error {
        match std::sync::Arc::try_unwrap(shared) {
            Ok(err) => err,
            Err(shared) => match &*shared {
                Error::Loader(e) => Error::Loader(e.clone()),
                Error::Encode(msg) => Error::Encode(msg.clone()),
                Error::TooLarge { size, max } => Error::TooLarge {
                    size: *size,
                    max: *max,
                },
                Error::Internal(what) => Error::Internal(what),
                Error::LoaderTimeout(after) => Error::LoaderTimeout(*after),
                Error::InvalidInput { what, problem } => Error::InvalidInput {
                    what: what.clone(),
                    problem: problem.clone(),
                },
                _ => Error::Loader(shared),
            },
        }
    }

    /// Whether this error means Redis could not be reached or did not answer in time, as opposed
    /// to bad input or bad data. Such errors feed the health monitor.
    pub fn is_connectivity(&self) -> bool {
        match self {
            Error::Unavailable | Error::Timeout(_) => true,
            Error::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
            }
            _ => false,
        }
    }
}

impl Error {
    /// Whether Redis could not serve the call at all: [`is_connectivity`](Self::is_connectivity),
    /// or a server that answered only to say it cannot serve now (loading its data set, a
    /// primary down or failing over, a cluster slot unserved, a script hogging it). Every other
    /// error is an answer the server gave on purpose (a wrong type, out of memory, no
    /// permission, a script error), which retrying elsewhere would not change.
    pub(crate) fn is_outage(&self) -> bool {
        use redis::{ErrorKind, ServerErrorKind};
        if self.is_connectivity() {
            return true;
        }
        let Error::Redis(e) = self else {
            return false;
        };
        matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        ) || e.code() == Some("BUSY")
    }

    /// A short name for the kind of error, for logs, counters and the health report: the
    /// Redis error code (`NOPERM`, `WRONGTYPE`, `OOM`, ...) when the server sent one.
    pub(crate) fn kind_name(&self) -> String {
        match self {
            Error::Redis(e) => e.code().unwrap_or("redis").to_owned(),
            Error::Timeout(_) => "timeout".to_owned(),
            Error::Unavailable => "unavailable".to_owned(),
            other => format!("{other:?}")
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("error")
                .to_owned(),
        }
    }
}
