use tierkit::cached;
static KIT: std::sync::LazyLock<tierkit::Tierkit> = std::sync::LazyLock::new(tierkit::Tierkit::embedded);

#[cached(namespace = "values", kit = KIT)]
async fn value<T: Default>(id: u64) -> Result<T, tierkit::Error> {
    let _ = id;
    Ok(T::default())
}

fn main() {}
