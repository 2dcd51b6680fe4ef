//! Every documented form compiles: a static or a parameter kit, default and expression keys,
//! TTLs, tags, a version, borrowed and `mut` parameters, a `Result` alias.
use std::sync::{Arc, LazyLock};

use tierkit::{cached, Tierkit};

static KIT: LazyLock<Tierkit> = LazyLock::new(Tierkit::embedded);

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
}

#[cached(namespace = "users", kit = KIT, ttl = "1h30m", tags = ["users", format!("org:{org}")], version = 2)]
async fn user(org: u64, id: u64) -> Result<User, tierkit::Error> {
    let _ = org;
    Ok(User { id })
}

#[cached(namespace = "names", kit = kit, key = format!("{id}"), ttl_secs = 60)]
async fn name(kit: &Tierkit, id: u64, mut suffix: String) -> tierkit::Result<String> {
    suffix.push('!');
    Ok(format!("{id}{suffix} {}", kit.is_embedded()))
}

#[cached(namespace = "lengths", kit = kit, key = format!("{text}:{bytes:?}"))]
pub(crate) async fn length(kit: Arc<Tierkit>, text: &str, bytes: &[u8]) -> Result<usize, tierkit::Error> {
    let _ = kit;
    Ok(text.len() + bytes.len())
}

/// No argument: one entry.
#[cached(namespace = "config", kit = KIT)]
async fn config() -> Result<Vec<String>, tierkit::Error> {
    Ok(vec![])
}

fn main() {
    let _ = (user(1, 2), config());
    let kit = Tierkit::embedded();
    let _ = name(&kit, 1, String::new());
    let _ = length(Arc::new(kit), "a", b"b");
}
