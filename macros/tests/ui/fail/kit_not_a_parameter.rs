use tierkit::{cached, Tierkit};

#[cached(namespace = "users", kit = tk)]
async fn user(kit: &Tierkit, id: u64) -> Result<u64, tierkit::Error> {
    let _ = kit;
    Ok(id)
}

fn main() {}
