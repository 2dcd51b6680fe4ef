use tierkit::cached;
static KIT: std::sync::LazyLock<tierkit::Tierkit> = std::sync::LazyLock::new(tierkit::Tierkit::embedded);

#[cached(namespace = "a", kit = KIT, ttl = "30 minutes")]
async fn words(id: u64) -> Result<u64, tierkit::Error> {
    Ok(id)
}

#[cached(namespace = "b", kit = KIT, ttl = 30)]
async fn number(id: u64) -> Result<u64, tierkit::Error> {
    Ok(id)
}

#[cached(namespace = "c", kit = KIT, ttl_secs = 0)]
async fn zero(id: u64) -> Result<u64, tierkit::Error> {
    Ok(id)
}

fn main() {}
