use tierkit::cached;
static KIT: std::sync::LazyLock<tierkit::Tierkit> = std::sync::LazyLock::new(tierkit::Tierkit::embedded);

#[cached(namespace = "users", kit = KIT)]
async fn user(id: u64) -> Option<u64> {
    Some(id)
}

#[cached(namespace = "users", kit = KIT)]
async fn nothing(id: u64) {
    let _ = id;
}

fn main() {}
