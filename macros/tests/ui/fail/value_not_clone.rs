use tierkit::cached;
static KIT: std::sync::LazyLock<tierkit::Tierkit> = std::sync::LazyLock::new(tierkit::Tierkit::embedded);

#[derive(serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
}

#[cached(namespace = "users", kit = KIT)]
async fn user(id: u64) -> Result<User, tierkit::Error> {
    Ok(User { id })
}

fn main() {}
