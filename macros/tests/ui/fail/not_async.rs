use tierkit::cached;
static KIT: std::sync::LazyLock<tierkit::Tierkit> = std::sync::LazyLock::new(tierkit::Tierkit::embedded);

#[cached(namespace = "users", kit = KIT)]
fn user(id: u64) -> Result<u64, tierkit::Error> {
    Ok(id)
}

fn main() {}
