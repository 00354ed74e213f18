//! One process of a session: the descriptors the agent hands over, checked; the relay of its
//! output to subscribers with its output cap and timeout; its end, recorded before it is told.

use super::*;

fn is_type(fd: &OwnedFd, want: rustix::fs::FileType) -> bool {
    rustix::fs::fstat(fd)
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == want)
        .unwrap_or(false)
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

impl ExecInner {
    pub(super) fn placeholder(
        exec_id: String,
        req: u64,
        mut spec: ExecSpec,
        cwd: String,
        session: Weak<Inner>,
    ) -> ExecInner {
        spec.cwd = Some(cwd);
        ExecInner {
            exec_id,
            req,
            pid: 0,
            spec,
            started: Instant::now(),
            events: broadcast::channel(1).0,
            first: Mutex::new(None),
            stdin: tokio::sync::Mutex::new(None),
            pty: None,
            outputs: Mutex::new(Vec::new()),
            term: watch::channel(None).0,
            outcome: watch::channel(None).0,
            session,
        }
    }

    /// Checks the descriptors the agent sent against what was asked for (count and type).
    pub(super) fn from_started(
        p: &ExecInner,
        pid: i32,
        claimed: u8,
        mut fds: Vec<OwnedFd>,
        tunneled: bool,
    ) -> Result<ExecInner, String> {
        let want = usize::from(p.spec.stdin && p.spec.pty.is_none())
            + if p.spec.pty.is_some() { 1 } else { 2 };
        if usize::from(claimed) != want || fds.len() != want || pid <= 0 {
            return Err(format!(
                "the agent sent {} descriptors for a process that needs {want}",
                fds.len()
            ));
        }
        let mut stdin = None;
        let mut pty = None;
        let mut outputs = Vec::new();
        if p.spec.stdin && p.spec.pty.is_none() {
            let fd = fds.remove(0);
            if !is_type(&fd, rustix::fs::FileType::Fifo) {
                return Err("stdin is not a pipe".into());
            }
            stdin = Some(fd);
        }
        if p.spec.pty.is_some() {
            let master = fds.remove(0);
            // Through a tunnel the PTY's bytes come on a socket; resizing is a request then.
            let kind = if tunneled {
                rustix::fs::FileType::Socket
            } else {
                rustix::fs::FileType::CharacterDevice
            };
            if !is_type(&master, kind) {
                return Err("the PTY master is not a terminal device".into());
            }
            let dup = master
                .try_clone()
                .map_err(|e| format!("duplicating the PTY master: {e}"))?;
            let rd = master
                .try_clone()
                .map_err(|e| format!("duplicating the PTY master: {e}"))?;
            stdin = Some(dup);
            outputs.push((Stream::Pty, rd));
            pty = Some(master);
        } else {
            for (k, fd) in [Stream::Stdout, Stream::Stderr].into_iter().zip(fds) {
                if !is_type(&fd, rustix::fs::FileType::Fifo) {
                    return Err("an output is not a pipe".into());
                }
                outputs.push((k, fd));
            }
        }
        for (_, fd) in &outputs {
            set_nonblocking(fd).map_err(|e| e.to_string())?;
        }
        if let Some(fd) = &stdin {
            set_nonblocking(fd).map_err(|e| e.to_string())?;
        }
        let (events, first) = broadcast::channel(FANOUT);
        Ok(ExecInner {
            exec_id: p.exec_id.clone(),
            req: p.req,
            pid,
            spec: p.spec.clone(),
            started: p.started,
            events,
            first: Mutex::new(Some(first)),
            stdin: tokio::sync::Mutex::new(stdin),
            pty,
            outputs: Mutex::new(outputs),
            term: watch::channel(None).0,
            outcome: watch::channel(None).0,
            session: p.session.clone(),
        })
    }
}

/// Registers an owned, non-blocking descriptor with the tokio reactor.
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` owns its descriptor for as long as the AsyncFd holds it and always
    // returns the same number from as_raw_fd, which is what `register` requires.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Reads one chunk from a non-blocking descriptor; Ok(0) at the end (EIO on a PTY is its end).
async fn read_chunk(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| {
            rustix::io::read(inner.get_ref(), &mut *buf).map_err(std::io::Error::from)
        }) {
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard
            .try_io(|inner| rustix::io::write(inner.get_ref(), data).map_err(std::io::Error::from))
        {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

impl ExecHandle {
    /// `e1`, `e2`, ... per sandbox, as in the audit trail.
    pub fn exec_id(&self) -> &str {
        &self.inner.exec_id
    }

    /// The pid inside the sandbox.
    pub fn pid(&self) -> i32 {
        self.inner.pid
    }

    /// What was asked for (`cwd` filled in with the directory it ran in).
    pub fn spec(&self) -> &ExecSpec {
        &self.inner.spec
    }

    /// Output and the end. The first call gets everything from the start (its receiver was made
    /// with the process); later calls get what comes from then on. A receiver that falls more
    /// than 4096 chunks behind gets `Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<ExecEvent> {
        match self.inner.first.lock().ok().and_then(|mut f| f.take()) {
            Some(rx) => rx,
            None => self.inner.events.subscribe(),
        }
    }

    /// The outcome, once it ended.
    pub fn outcome(&self) -> Option<ExecOutcome> {
        self.inner.outcome.borrow().clone()
    }

    /// Waits for the end.
    pub async fn wait(&self) -> ExecOutcome {
        let mut rx = self.inner.outcome.subscribe();
        loop {
            if let Some(o) = rx.borrow_and_update().clone() {
                return o;
            }
            if rx.changed().await.is_err() {
                return ExecOutcome {
                    termination: None,
                    exit_code: 128 + libc::SIGKILL,
                    end: ExecEnd::SandboxEnded,
                    output_bytes: 0,
                    duration: self.inner.started.elapsed(),
                };
            }
        }
    }

    /// Writes to its stdin (pipe or PTY). Fails with Invalid when it has no stdin or it is closed.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), SessionError> {
        let mut g = self.inner.stdin.lock().await;
        let Some(fd) = g.take() else {
            return Err(SessionError::Invalid(
                "the process has no open stdin (start it with stdin, or it was closed)".into(),
            ));
        };
        let afd = register(fd).map_err(|e| SessionError::Invalid(format!("stdin: {e}")))?;
        let r = write_all(&afd, data).await;
        *g = Some(afd.into_inner());
        r.map_err(|e| {
            if e.raw_os_error() == Some(libc::EPIPE) {
                SessionError::Invalid("the process closed its stdin".into())
            } else {
                SessionError::Invalid(format!("writing stdin: {e}"))
            }
        })
    }

    /// Closes its stdin (EOF); for a PTY, sends end-of-file (^D) instead, which the terminal
    /// turns into EOF for the reader.
    pub async fn close_stdin(&self) {
        if self.inner.pty.is_some() {
            let _ = self.write_stdin(&[4]).await;
            return;
        }
        self.inner.stdin.lock().await.take();
    }

    /// Sends a signal (1-31) to its process group.
    pub fn signal(&self, signal: i32) -> Result<(), SessionError> {
        if !(1..=31).contains(&signal) {
            return Err(SessionError::Invalid(format!(
                "signal {signal}: expected 1-31"
            )));
        }
        if self.inner.outcome.borrow().is_some() {
            return Err(SessionError::Invalid("the process has ended".into()));
        }
        let s = self.inner.session.upgrade().ok_or(SessionError::Gone)?;
        s.send(&SupervisorMsg::Signal {
            id: self.inner.req,
            signal,
        })
        .map_err(|_| SessionError::Gone)
    }

    /// Resizes its PTY (Invalid when it has none).
    pub fn resize(&self, size: PtySize) -> Result<(), SessionError> {
        let Some(m) = &self.inner.pty else {
            return Err(SessionError::Invalid("the process has no PTY".into()));
        };
        if size.rows == 0 || size.cols == 0 {
            return Err(SessionError::Invalid(
                "rows and cols must be at least 1".into(),
            ));
        }
        let ws = libc::winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if is_type(m, rustix::fs::FileType::Socket) {
            // Through a tunnel: the agent resizes the master it kept.
            let s = self.inner.session.upgrade().ok_or(SessionError::Gone)?;
            return s
                .send(&SupervisorMsg::Resize {
                    id: self.inner.req,
                    size,
                })
                .map_err(|_| SessionError::Gone);
        }
        // SAFETY: TIOCSWINSZ reads one winsize struct from the valid pointer; `m` is an open
        // PTY master owned by this handle.
        let r = unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(SessionError::Invalid(format!(
                "resize: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Starts the tasks that move its output and decide its end (needs a tokio runtime).
    pub(super) fn start_relay(&self) -> Result<(), SessionError> {
        let x = self.inner.clone();
        let outputs = std::mem::take(&mut *x.outputs.lock().map_err(|_| SessionError::Gone)?);
        let (tx, rx) = mpsc::channel::<(Stream, Bytes)>(64);
        let mut readers = Vec::new();
        for (kind, fd) in outputs {
            let afd = register(fd)
                .map_err(|e| SessionError::Protocol(format!("output descriptor: {e}")))?;
            let tx = tx.clone();
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match read_chunk(&afd, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tx
                                .send((kind, Bytes::copy_from_slice(&buf[..n])))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            }));
        }
        drop(tx);
        tokio::spawn(relay(x, rx, readers));
        Ok(())
    }
}

/// Moves one process's output to its subscribers, enforces its timeout and output cap, and
/// records its end once the agent reported it and its output has drained (bounded).
async fn relay(
    x: Arc<ExecInner>,
    mut rx: mpsc::Receiver<(Stream, Bytes)>,
    readers: Vec<tokio::task::JoinHandle<()>>,
) {
    let (max_output, default_timeout) = match x.session.upgrade() {
        Some(s) => (s.max_output, s.default_timeout),
        None => (0, Duration::ZERO),
    };
    let timeout = x.spec.timeout.unwrap_or(default_timeout);
    let deadline = tokio::time::Instant::from_std(x.started + timeout);
    let mut term_rx = x.term.subscribe();
    // The agent may have reported the end before this task started.
    let early = *term_rx.borrow_and_update();
    let mut used: u64 = 0;
    let mut end = ExecEnd::Exited;
    let mut over = false;
    let mut outputs_done = false;
    let mut termination: Option<Option<Termination>> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    if let Some(t) = early {
        if t.is_none() {
            end = ExecEnd::SandboxEnded;
        }
        termination = Some(t);
        drain_until = Some(tokio::time::Instant::now() + DRAIN);
    }
    let kill = |x: &ExecInner| {
        if let Some(s) = x.session.upgrade() {
            let _ = s.send(&SupervisorMsg::Signal {
                id: x.req,
                signal: libc::SIGKILL,
            });
        }
    };
    loop {
        if outputs_done && termination.is_some() {
            break;
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        tokio::select! {
            chunk = rx.recv(), if !outputs_done => match chunk {
                Some((kind, data)) => {
                    if over {
                        continue;
                    }
                    let room = max_output.saturating_sub(used);
                    let n = (data.len() as u64).min(room) as usize;
                    used += n as u64;
                    if n > 0 {
                        let d = data.slice(..n);
                        let _ = x.events.send(match kind {
                            Stream::Stdout => ExecEvent::Stdout(d),
                            Stream::Stderr => ExecEvent::Stderr(d),
                            Stream::Pty => ExecEvent::Pty(d),
                        });
                    }
                    if n < data.len() {
                        over = true;
                        if end == ExecEnd::Exited {
                            end = ExecEnd::Output;
                        }
                        kill(&x);
                    }
                }
                None => outputs_done = true,
            },
            changed = term_rx.changed(), if termination.is_none() => {
                let t = if changed.is_ok() { *term_rx.borrow_and_update() } else { Some(None) };
                if let Some(t) = t {
                    if t.is_none() && end == ExecEnd::Exited {
                        end = ExecEnd::SandboxEnded;
                    }
                    termination = Some(t);
                    drain_until = Some(tokio::time::Instant::now() + DRAIN);
                }
            },
            _ = tokio::time::sleep_until(deadline), if termination.is_none() && end == ExecEnd::Exited => {
                end = ExecEnd::Timeout;
                kill(&x);
            },
            _ = tokio::time::sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => {
                break;
            },
        }
    }
    for r in readers {
        r.abort();
    }
    let termination = termination.flatten();
    let exit_code = match termination {
        Some(t) => t.shell_code(),
        None => 128 + libc::SIGKILL,
    };
    let outcome = ExecOutcome {
        termination,
        exit_code,
        end,
        output_bytes: used,
        duration: x.started.elapsed(),
    };
    if let Some(s) = x.session.upgrade() {
        if let Some(a) = &s.audit {
            let l = match end {
                ExecEnd::Timeout => Some(Limit::Timeout),
                ExecEnd::Output => Some(Limit::Output),
                _ => None,
            };
            if let Some(limit) = l {
                a.emit(
                    Some(&x.exec_id),
                    EventKind::LimitHit {
                        limit,
                        value: match limit {
                            Limit::Timeout => stockade_policy::format_duration(timeout),
                            _ => stockade_policy::ByteSize(max_output).to_string(),
                        },
                        detail: match limit {
                            Limit::Timeout => "killed: the process's timeout was reached".into(),
                            _ => "killed: the process's output limit was reached".into(),
                        },
                    },
                );
            }
            a.emit(
                Some(&x.exec_id),
                EventKind::ExecExited {
                    exit_code: match termination {
                        Some(Termination::Exited(c)) => Some(c),
                        _ => None,
                    },
                    signal: match termination {
                        Some(Termination::Signaled(sig)) => Some(sig),
                        None => Some(libc::SIGKILL),
                        _ => None,
                    },
                    duration_ms: outcome.duration.as_millis() as u64,
                    cpu_time_ms: None,
                    peak_memory_bytes: None,
                    output_bytes: used,
                    limit: l,
                },
            );
        }
        if let Ok(mut st) = s.state.lock() {
            st.execs.remove(&x.req);
        }
    }
    // The end is on record before anyone hears of it.
    x.outcome.send_replace(Some(outcome.clone()));
    let _ = x.events.send(ExecEvent::Exited(outcome));
}
