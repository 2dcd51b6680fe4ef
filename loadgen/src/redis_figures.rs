//! What Redis holds after a run: its memory and key count, for the report.

use std::time::Duration;

/// `used_memory` and `DBSIZE`, or `None` where Redis does not answer within a second.
pub async fn read(url: &str) -> (Option<u64>, Option<u64>) {
    let query = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
        let memory = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok());
        Ok::<_, redis::RedisError>((memory, Some(keys)))
    };
    match tokio::time::timeout(Duration::from_secs(1), query).await {
        Ok(Ok(figures)) => figures,
        _ => (None, None),
    }
}
