//! The Postgres store behind the seam: as ingest, notifications, the
//! delivery engine and `hookrelay api` use it, with the operator's own
//! rights (users reach it only through `hookrelay api`, which asks RBAC).

use super::{Postgres, version_of};
use crate::resources::delivery::{Delivery, DeliveryStatus, Phase};
use crate::store::paging::{self, Listed};
use crate::store::{Deliveries, Fanout, Records, StoreError, Written};
use futures::stream::BoxStream;
use kube::ResourceExt;

#[async_trait::async_trait]
impl Deliveries for Postgres {
    async fn insert<'a>(
        &'a self,
        _namespace: &'a str,
        deliveries: Fanout<'a>,
        _generated_id: bool,
    ) -> Result<(), StoreError> {
        // One transaction (grouped with concurrent events): all or none.
        self.insert_event(deliveries).await.map_err(StoreError::Database)
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Delivery>, StoreError> {
        self.read(namespace, name).await.map_err(StoreError::Database)
    }

    async fn get_many(&self, names: &[(String, String)]) -> Result<Vec<Delivery>, StoreError> {
        self.read_many(names).await.map_err(StoreError::Database)
    }

    async fn list(
        &self,
        namespace: Option<&str>,
        webhook: Option<&str>,
        phases: &[Phase],
        most: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.recent(namespace, webhook, phases, most as i64)
            .await
            .map_err(StoreError::Database)
    }

    async fn redeliver(&self, namespace: &str, name: &str, request: &str) -> Result<(), StoreError> {
        match Postgres::redeliver(self, namespace, name, request).await {
            Ok(true) => Ok(()),
            // Refused while claimed, or not there at all.
            Ok(false) => match self.read(namespace, name).await {
                Ok(Some(_)) => Err(StoreError::Busy),
                Ok(None) => Err(StoreError::NotFound(format!("no delivery {name} in {namespace}"))),
                Err(e) => Err(StoreError::Database(e)),
            },
            Err(e) => Err(StoreError::Database(e)),
        }
    }

    async fn changes(&self, _namespace: &str, _webhook: &str) -> Result<BoxStream<'static, String>, StoreError> {
        Err(StoreError::Invalid(
            "the Postgres store has no change stream of its own; read it as a user (their Webhook is watched)".into(),
        ))
    }

    /// Keyset paging in accept order (`seq`): the database hands over one
    /// page, however many rows the namespace holds.
    async fn page(
        &self,
        namespace: Option<&str>,
        webhook: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Listed, StoreError> {
        let before = match after {
            Some(token) => Some(token.parse::<i64>().map_err(|_| paging::expired())?),
            None => None,
        };
        let limit = limit.max(1);
        let mut rows = Postgres::page(self, namespace, webhook, before, limit as i64 + 1)
            .await
            .map_err(StoreError::Database)?;
        let next = (rows.len() > limit).then(|| {
            rows.truncate(limit);
            rows.last().expect("limit ≥ 1").1.to_string()
        });
        Ok(Listed {
            deliveries: rows.into_iter().map(|(d, _)| d).collect(),
            next,
        })
    }

    async fn position(&self) -> Result<Option<String>, StoreError> {
        Postgres::position(self).await.map(Some).map_err(StoreError::Database)
    }

    async fn changed_since(
        &self,
        namespace: Option<&str>,
        position: &str,
    ) -> Result<(Vec<(String, String)>, String), StoreError> {
        if !is_snapshot(position) {
            return Err(StoreError::Expired(format!(
                "resourceVersion {position:?} is not one this server gave; list again"
            )));
        }
        let (changed, now) = Postgres::changed_since(self, namespace, position, CHANGED_MOST + 1)
            .await
            .map_err(StoreError::Database)?;
        if changed.len() as i64 > CHANGED_MOST {
            return Err(StoreError::Expired(format!(
                "more than {CHANGED_MOST} deliveries changed since resourceVersion {position:?}; list again"
            )));
        }
        Ok((changed, now))
    }
}

/// The most changed deliveries one `changed_since` answers with: a watch
/// that falls further behind lists again.
const CHANGED_MOST: i64 = 5_000;

/// Whether `text` reads as a `pg_snapshot` (`xmin:xmax:xip,…`), so nothing
/// else reaches the database's parser.
fn is_snapshot(text: &str) -> bool {
    let mut parts = text.split(':');
    let number = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
    let (Some(xmin), Some(xmax), Some(xip), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    number(xmin) && number(xmax) && (xip.is_empty() || xip.split(',').all(number))
}

#[async_trait::async_trait]
impl Records for Postgres {
    /// One conditional UPDATE: the version the engine read, and the claim
    /// still `claimant`'s.
    async fn record(
        &self,
        delivery: &Delivery,
        status: &DeliveryStatus,
        claimant: &str,
    ) -> Result<Written, StoreError> {
        let Some(seen) = version_of(delivery) else {
            return Err(StoreError::Invalid("the delivery was not read from the store".into()));
        };
        let mut updated = delivery.clone();
        updated.status = Some(status.clone());
        match Postgres::record(self, &updated, seen, claimant).await {
            Ok(Some(stored)) => Ok(Written::Stored(stored)),
            Ok(None) => match self
                .read(&delivery.namespace().unwrap_or_default(), &delivery.name_any())
                .await
            {
                Ok(None) => Ok(Written::Gone),
                Ok(Some(fresh)) => Ok(Written::Superseded(fresh)),
                Err(e) => Err(StoreError::Database(format!("after a conflict: {e}"))),
            },
            Err(e) => Err(StoreError::Database(e)),
        }
    }
}

/// A turn at a webhook's rate (GCRA, `crate::store::turns::decide` in
/// SQL), in one statement and one round trip: the row's time moves on only
/// when the turn is taken, so replicas taking turns together never exceed
/// the rate; a refused turn answers how long until it is due (read from the
/// statement's snapshot, which a refusal left unchanged).
const TAKE_TURN: &str = "
WITH taken AS (
    INSERT INTO hookrelay_turns AS t (namespace, webhook, tat)
    VALUES ($1, $2, extract(epoch FROM now())::float8 + $3::float8)
    ON CONFLICT (namespace, webhook) DO UPDATE
        SET tat = greatest(t.tat, extract(epoch FROM now())::float8) + $3::float8
        -- compared as offsets from now: epoch seconds as float8 keep only
        -- about a tenth of a microsecond, hence the microsecond of slack
        WHERE greatest(t.tat - extract(epoch FROM now())::float8, 0) + $3::float8 <= $4::float8 + 1e-6
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM taken),
       (SELECT greatest(tat - extract(epoch FROM now())::float8, 0) + $3::float8 - $4::float8
        FROM hookrelay_turns WHERE namespace = $1 AND webhook = $2)";

#[async_trait::async_trait]
impl crate::store::Turns for Postgres {
    async fn take_turn(
        &self,
        namespace: &str,
        webhook: &str,
        rate: crate::store::turns::Rate,
    ) -> Result<Option<std::time::Duration>, StoreError> {
        let client = self.client().await.map_err(StoreError::Database)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&namespace, &webhook, &rate.interval, &rate.tolerance];
        let take = super::timed(client.prepare_cached(TAKE_TURN))
            .await
            .map_err(StoreError::Database)?;
        let row = super::timed(client.query_one(&take, &params))
            .await
            .map_err(StoreError::Database)?;
        if row.get::<_, bool>(0) {
            return Ok(None);
        }
        // No row yet in the snapshot (another replica's first turn, just
        // committed): try at once.
        let seconds: f64 = row.get::<_, Option<f64>>(1).unwrap_or(0.0);
        Ok(Some(std::time::Duration::from_secs_f64(seconds.clamp(0.0, 3600.0))))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_snapshot_text_is_taken_as_a_position() {
        assert!(super::is_snapshot("748:752:748,750"));
        assert!(super::is_snapshot("752:752:"));
        for bad in ["", "0", "1:2", "1:2:3:4", "a:2:", "1:2:3,,4", "1:2:3;DROP"] {
            assert!(!super::is_snapshot(bad), "{bad}");
        }
    }
}
