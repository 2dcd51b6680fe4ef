use tierkit::cached;
static KIT: std::sync::LazyLock<tierkit::Tierkit> = std::sync::LazyLock::new(tierkit::Tierkit::embedded);

#[cached(namespace = "users", kit = KIT, time_to_live = "5m")]
async fn user(id: u64) -> Result<u64, tierkit::Error> {
    Ok(id)
}

#[cached(namespace = "users", kit = KIT, ttl = "5m", ttl_secs = 300)]
async fn twice(id: u64) -> Result<u64, tierkit::Error> {
    Ok(id)
}

#[cached("users")]
async fn positional(id: u64) -> Result<u64, tierkit::Error> {
    Ok(id)
}

fn main() {}
