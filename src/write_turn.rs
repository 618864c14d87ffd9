//! One write turn per database file for the writers of this process. The store and the
//! embedded clients write to the same SQLite file through connections of their own;
//! SQLite lets one of them write at a time and makes the others poll, sleeping between
//! tries (milliseconds each, growing). Taking the file's turn first makes a writer of
//! this process wait on a lock that wakes it the moment the other is done. Writers in
//! other processes (a command run beside the service) still meet SQLite's busy wait.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// The write turn of one database file.
#[derive(Debug, Clone, Default)]
pub struct Turn(Arc<Mutex<()>>);

impl Turn {
    /// The turn of the file at `path`, shared by every opener of the same file in
    /// this process.
    pub fn for_file(path: &Path) -> Turn {
        static TURNS: OnceLock<Mutex<HashMap<PathBuf, Weak<Mutex<()>>>>> = OnceLock::new();
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let mut turns = TURNS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        turns.retain(|_, turn| turn.strong_count() > 0);
        if let Some(turn) = turns.get(&key).and_then(Weak::upgrade) {
            return Turn(turn);
        }
        let turn = Arc::new(Mutex::new(()));
        turns.insert(key, Arc::downgrade(&turn));
        Turn(turn)
    }

    /// Waits for the turn; it is given back when the guard is dropped.
    pub fn take(&self) -> MutexGuard<'_, ()> {
        // Nothing is guarded but the turn itself: a panic of its holder leaves nothing
        // half done here.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn openers_of_one_file_share_its_turn_and_other_files_have_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.db");
        let b = dir.path().join("b.db");
        std::fs::write(&a, b"").unwrap();
        let first = Turn::for_file(&a);
        let again = Turn::for_file(&dir.path().join(".").join("a.db"));
        let other = Turn::for_file(&b);
        let held = first.take();
        assert!(again.0.try_lock().is_err(), "the same file's turn is taken");
        assert!(other.0.try_lock().is_ok(), "another file's turn is free");
        drop(held);
        assert!(again.0.try_lock().is_ok());
    }
}
