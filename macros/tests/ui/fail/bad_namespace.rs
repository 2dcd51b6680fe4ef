use tierkit::cached;
static KIT: std::sync::LazyLock<tierkit::Tierkit> = std::sync::LazyLock::new(tierkit::Tierkit::embedded);

#[cached(namespace = "user profiles", kit = KIT)]
async fn spaced(id: u64) -> Result<u64, tierkit::Error> {
    Ok(id)
}

#[cached(namespace = USERS, kit = KIT)]
async fn not_a_literal(id: u64) -> Result<u64, tierkit::Error> {
    Ok(id)
}

fn main() {}
