//! Man pages and shell completions generated from the clap definitions in
//! [`crate::cli`] (clap_mangen, clap_complete), by the hidden
//! `walrcv generate-assets DIR` subcommand: the Debian package ships them
//! (`scripts/build-deb.sh`), and a normal build does no extra work.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, GenerateArgs};

/// The shells completions are written for (Debian ships these three).
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes the man pages (one for walrcv, one per visible subcommand) and the
/// completions; returns every file written.
pub fn generate(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let man_dir = dir.join("man");
    let completions_dir = dir.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&completions_dir)?;
    clap_mangen::generate_to(Cli::command(), &man_dir)?;
    let mut written = files_in(&man_dir)?;
    for shell in SHELLS {
        written.push(clap_complete::generate_to(
            shell,
            &mut Cli::command(),
            "walrcv",
            &completions_dir,
        )?);
    }
    Ok(written)
}

fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    files.sort();
    Ok(files)
}

/// The `generate-assets` subcommand: prints each file written; exit 0, or 1
/// with the error.
pub fn run(args: &GenerateArgs) -> i32 {
    match generate(&args.dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            0
        }
        Err(e) => {
            eprintln!(
                "walrcv: error: could not write into \"{}\": {e}",
                args.dir.display()
            );
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_man_pages_for_visible_subcommands_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "walrcv.1",
            "walrcv-stream.1",
            "walrcv-verify.1",
            "walrcv.bash",
            "_walrcv",
            "walrcv.fish",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
        let stream = std::fs::read_to_string(dir.path().join("man/walrcv-stream.1")).unwrap();
        assert!(stream.contains("receive\\-timeout"), "{stream}");
        assert!(stream.contains("log\\-format"), "{stream}");
        let bash = std::fs::read_to_string(dir.path().join("completions/walrcv.bash")).unwrap();
        assert!(bash.contains("--directory") && bash.contains("--log-format"));
    }
}
