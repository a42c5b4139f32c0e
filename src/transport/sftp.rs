//! A remote file read at random over SFTP, spoken with the host's own
//! sftp-server started in an exec channel (`ExecStream`): requests are
//! pipelined by russh-sftp, and nothing is installed on the host.

use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error;
use russh_sftp::protocol::OpenFlags;

use super::ExecStream;

/// Why an SFTP request failed.
#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    #[error("the remote sftp-server did not start ({0})")]
    Start(String),
    #[error("{0}")]
    Refused(String),
    /// The channel closed or went silent: the connection is gone.
    #[error("the connection to the host was lost ({0})")]
    Lost(String),
}

fn classify(e: Error) -> SftpError {
    match e {
        Error::Status(_) | Error::Limited(_) | Error::UnexpectedPacket => {
            SftpError::Refused(e.to_string())
        }
        Error::IO(_) | Error::Timeout | Error::UnexpectedBehavior(_) => {
            SftpError::Lost(e.to_string())
        }
    }
}

/// One file open for reading.
pub struct SftpFile {
    sftp: RawSftpSession,
    handle: String,
}

impl SftpFile {
    /// Starts SFTP on `stream` and opens `path` read-only.
    pub async fn open(stream: ExecStream, path: &str) -> Result<SftpFile, SftpError> {
        let sftp = RawSftpSession::new(stream);
        sftp.set_timeout(30);
        sftp.init()
            .await
            .map_err(|e| SftpError::Start(e.to_string()))?;
        let handle = sftp
            .open(path, OpenFlags::READ, Default::default())
            .await
            .map_err(classify)?
            .handle;
        Ok(SftpFile { sftp, handle })
    }

    /// Up to `len` bytes at `offset`; fewer is a short read, none the end.
    pub async fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, SftpError> {
        Ok(self
            .sftp
            .read(self.handle.clone(), offset, len)
            .await
            .map_err(classify)?
            .data)
    }

    pub async fn close(self) {
        let _ = self.sftp.close(self.handle).await;
        let _ = self.sftp.close_session();
    }
}
