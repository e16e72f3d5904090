//! A projection directory holds generations (`gen-<n>/`, each a RocksDB) and a `CURRENT`
//! file naming the one in use. A replay builds the next generation next to the live one and
//! switches `CURRENT` (write + rename, atomic) once it has caught up, so the API keeps
//! serving the old generation until then and a crash at any point leaves one valid choice.
//! Snapshots are RocksDB checkpoints in `snapshots/<name>/`; their offsets are inside them.

use std::path::{Path, PathBuf};

use super::store::{ProjectionStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("projection directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: `{text}` does not name a generation (gen-<n>)")]
    BadCurrent { path: PathBuf, text: String },
    #[error("snapshot {0} does not exist or is not a projection checkpoint")]
    NoSnapshot(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GenerationError + '_ {
    move |source| GenerationError::Io { path: path.to_path_buf(), source }
}

pub struct Generations {
    dir: PathBuf,
}

impl Generations {
    pub fn new(dir: &Path) -> Result<Generations, GenerationError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(Generations { dir: dir.to_path_buf() })
    }

    fn current_file(&self) -> PathBuf {
        self.dir.join("CURRENT")
    }

    pub fn path_of(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("gen-{generation}"))
    }

    /// The generation in use (0 for a new directory).
    pub fn current(&self) -> Result<u64, GenerationError> {
        let file = self.current_file();
        match std::fs::read_to_string(&file) {
            Ok(text) => text
                .trim()
                .strip_prefix("gen-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| GenerationError::BadCurrent { path: file.clone(), text: text.trim().to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(GenerationError::Io { path: file, source: e }),
        }
    }

    /// Opens the generation in use, removing generations a replay or restore left behind.
    pub fn open_current(&self) -> Result<ProjectionStore, GenerationError> {
        let current = self.current()?;
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_prefix("gen-").and_then(|n| n.parse::<u64>().ok())
                && n != current
                && let Err(error) = std::fs::remove_dir_all(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), %error, "could not remove an old projection generation");
            }
        }
        Ok(ProjectionStore::open(&self.path_of(current))?)
    }

    /// An empty directory for the next generation (a leftover of an interrupted replay is
    /// removed first).
    pub fn prepare_next(&self) -> Result<(u64, PathBuf), GenerationError> {
        let next = self.current()? + 1;
        let path = self.path_of(next);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
        Ok((next, path))
    }

    /// Makes `generation` the one in use. The old one is removed at the next open: a live
    /// projector may still be finishing a batch on it.
    pub fn switch_to(&self, generation: u64) -> Result<(), GenerationError> {
        let tmp = self.dir.join("CURRENT.tmp");
        std::fs::write(&tmp, format!("gen-{generation}\n")).map_err(io(&tmp))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io(&tmp))?;
        std::fs::rename(&tmp, self.current_file()).map_err(io(&self.dir))?;
        Ok(())
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// Copies a checkpoint into the next generation and switches to it: the projector then
    /// tails the log from the offsets the snapshot carries.
    pub fn restore(&self, snapshot: &Path) -> Result<u64, GenerationError> {
        if !snapshot.join("CURRENT").exists() {
            return Err(GenerationError::NoSnapshot(snapshot.to_path_buf()));
        }
        let (next, path) = self.prepare_next()?;
        copy_dir(snapshot, &path)?;
        // Opening checks that it is a projection (all column families) before switching.
        drop(ProjectionStore::open(&path)?);
        self.switch_to(next)?;
        Ok(next)
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), GenerationError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(io(from))?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if entry.path().extension().is_some_and(|e| e == "sst") && std::fs::hard_link(entry.path(), &target).is_ok() {
            // Table files are immutable: a hard link (as RocksDB's own checkpoints use) costs
            // nothing and the snapshot stays intact. Other files (MANIFEST, OPTIONS) are copied.
        } else {
            std::fs::copy(entry.path(), &target).map_err(io(&target))?;
        }
    }
    Ok(())
}
