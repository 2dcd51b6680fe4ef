use tierkit::cached;
static KIT: std::sync::LazyLock<tierkit::Tierkit> = std::sync::LazyLock::new(tierkit::Tierkit::embedded);

#[cached(namespace = "counts", kit = KIT)]
async fn bump(count: &mut u64) -> Result<u64, tierkit::Error> {
    *count += 1;
    Ok(*count)
}

#[cached(namespace = "pairs", kit = KIT)]
async fn pair((a, b): (u64, u64)) -> Result<u64, tierkit::Error> {
    Ok(a + b)
}

fn main() {}
