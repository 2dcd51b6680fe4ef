//! What Redis holds after a run (its memory and key count), and the CPU it spent during the
//! measured part, for the report.

use std::time::Duration;

/// `used_memory` and `DBSIZE`, or `None` where Redis does not answer within a second.
pub async fn read(url: &str) -> (Option<u64>, Option<u64>) {
    let query = async {
        let mut conn = connect(url).await?;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
        Ok::<_, redis::RedisError>((field(&info, "used_memory"), Some(keys)))
    };
    match tokio::time::timeout(Duration::from_secs(1), query).await {
        Ok(Ok(figures)) => figures,
        _ => (None, None),
    }
}

/// The CPU seconds (user and system) the server has spent since it started, or `None` where it
/// does not answer within a second. On a machine Redis shares with the process under test,
/// this is CPU the process did not get: a backend's Redis work per operation is part of its
/// cost.
pub async fn cpu_seconds(url: &str) -> Option<f64> {
    let query = async {
        let mut conn = connect(url).await?;
        let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
        Ok::<_, redis::RedisError>(
            field::<f64>(&info, "used_cpu_user")
                .zip(field::<f64>(&info, "used_cpu_sys"))
                .map(|(user, sys)| user + sys),
        )
    };
    tokio::time::timeout(Duration::from_secs(1), query)
        .await
        .ok()?
        .ok()?
}

async fn connect(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

/// The value of `name` in an `INFO` answer.
fn field<T: std::str::FromStr>(info: &str, name: &str) -> Option<T> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_is_found_by_its_whole_name() {
        let info =
            "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_sys_children:9.0\r\nused_cpu_user:2.25\r\n";
        assert_eq!(field::<f64>(info, "used_cpu_sys"), Some(1.5));
        assert_eq!(field::<f64>(info, "used_cpu_user"), Some(2.25));
        assert_eq!(field::<f64>(info, "used_cpu"), None);
    }
}
