use tierkit::{cached, Tierkit};

struct Repo {
    kit: Tierkit,
}

impl Repo {
    #[cached(namespace = "users", kit = self.kit)]
    async fn user(&self, id: u64) -> Result<u64, tierkit::Error> {
        Ok(id)
    }
}

fn main() {}
