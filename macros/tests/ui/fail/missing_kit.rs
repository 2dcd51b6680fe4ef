use tierkit::cached;

#[cached(namespace = "users")]
async fn user(id: u64) -> Result<u64, tierkit::Error> {
    Ok(id)
}

fn main() {}
