//! A deleted row leaves no trace in the SQLite file (`PRAGMA secure_delete`): the TSM deletes
//! each operation's sealed parts when it ends and the broker its one-time values, and neither
//! may linger in a free block of a page still in use. The marker is written, deleted, the
//! database closed (SQLite checkpoints the log into the file and removes it), and the bytes of
//! the file searched for it.

use kagi_db::{Backend, Db, Schema, Stmt};

const SCHEMA: Schema = Schema {
    name: "secure-delete-test",
    version: 1,
    ddl: &["CREATE TABLE IF NOT EXISTS s (id BIGINT PRIMARY KEY, v BLOB NOT NULL)"],
    migrations: &[],
};

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_row_is_erased_from_the_file() {
    let dir = std::env::temp_dir().join(format!("kagi-secure-delete-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("t.db");
    // 300 bytes no other row holds; neighbours on the same page keep the page in use.
    let marker: Vec<u8> = (0..300u32).map(|i| (i * 7 + 13) as u8 ^ 0xA5).collect();
    {
        let db = Db::open(&Backend::Sqlite(path.clone()), &SCHEMA)
            .await
            .unwrap();
        let mut batch = Vec::new();
        for id in 0..6i64 {
            let v = if id == 3 {
                marker.clone()
            } else {
                vec![b'n'; 300]
            };
            batch.push(Stmt::one(
                "INSERT INTO s (id, v) VALUES ($1, $2)",
                vec![id.into(), v.into()],
            ));
        }
        db.commit(batch).await.unwrap();
        db.commit(vec![Stmt::one(
            "DELETE FROM s WHERE id = $1",
            vec![3i64.into()],
        )])
        .await
        .unwrap();
        let left = db.query("SELECT COUNT(*) FROM s", vec![]).await.unwrap();
        assert_eq!(left[0][0].int(), 5);
    }
    let mut bytes = std::fs::read(&path).unwrap();
    if let Ok(wal) = std::fs::read(dir.join("t.db-wal")) {
        bytes.extend(wal);
    }
    assert!(
        !contains(&bytes, &marker[..64]),
        "the deleted row's bytes are still in the database file"
    );
    // The neighbours are still there (the search would find a kept row).
    assert!(contains(&bytes, &[b'n'; 64]));
    std::fs::remove_dir_all(&dir).unwrap();
}
