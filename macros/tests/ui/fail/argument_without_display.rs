use tierkit::cached;
static KIT: std::sync::LazyLock<tierkit::Tierkit> = std::sync::LazyLock::new(tierkit::Tierkit::embedded);

#[derive(Clone)]
struct Pool;

#[cached(namespace = "users", kit = KIT)]
async fn user(pool: Pool, id: u64) -> Result<u64, tierkit::Error> {
    let _ = pool;
    Ok(id)
}

fn main() {}
