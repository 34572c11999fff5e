//! A Modbus connection that survives: a timeout on every call, drop and reconnect with
//! exponential backoff after a timeout or transport error (a reused context can see
//! transaction-id mismatches after a timeout), over TCP, RTU-over-TCP or an RTU serial port.

use crate::config::{DeviceConfig, Parity, Transport};
use crate::sunspec::{ReadFailure, RegisterSource};
use std::time::Duration;
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context, Writer};
use tokio_modbus::slave::Slave;
use tokio_modbus::{Request, Response};

/// Shortest and longest reconnect delay.
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One device's Modbus connection.
pub struct ModbusLink {
    device: DeviceConfig,
    timeout: Duration,
    context: Option<Context>,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// How many times the connection was dropped after a failure.
    pub reconnects: u64,
}

impl std::fmt::Debug for ModbusLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModbusLink({})", self.device.location())
    }
}

impl ModbusLink {
    /// A link for `device` with `timeout` per call (not connected yet).
    pub fn new(device: DeviceConfig, timeout: Duration) -> Self {
        ModbusLink {
            device,
            timeout,
            context: None,
            backoff: MIN_BACKOFF,
            retry_at: None,
            reconnects: 0,
        }
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.context.is_some()
    }

    fn fail(&mut self, why: String) -> ReadFailure {
        if self.context.take().is_some() {
            self.reconnects += 1;
        }
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        ReadFailure::Transport(format!("at {}: {why}", self.device.location()))
    }

    async fn connect(&mut self) -> Result<(), ReadFailure> {
        if let Some(at) = self.retry_at
            && Instant::now() < at
        {
            return Err(ReadFailure::Transport(format!(
                "at {}: waiting {:?} before reconnecting",
                self.device.location(),
                at - Instant::now()
            )));
        }
        let slave = Slave(self.device.unit.unwrap_or(1));
        let result = match self.device.transport {
            Transport::ModbusTcp | Transport::RtuOverTcp => {
                let host = self.device.host.clone().unwrap_or_default();
                let port = self.device.port.unwrap_or(502);
                match tokio::time::timeout(
                    self.timeout,
                    tokio::net::TcpStream::connect((host.as_str(), port)),
                )
                .await
                {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        Ok(if self.device.transport == Transport::ModbusTcp {
                            tokio_modbus::client::tcp::attach_slave(stream, slave)
                        } else {
                            tokio_modbus::client::rtu::attach_slave(stream, slave)
                        })
                    }
                    Ok(Err(e)) => Err(format!(
                        "cannot connect: {e} (is the device on and the address right?)"
                    )),
                    Err(_) => Err(format!("connecting timed out after {:?}", self.timeout)),
                }
            }
            Transport::ModbusRtu => serial::open(
                self.device
                    .serial_path
                    .as_deref()
                    .unwrap_or(std::path::Path::new("")),
                self.device.baud.unwrap_or(9600),
                self.device.parity.unwrap_or_default(),
            )
            .map(|port| tokio_modbus::client::rtu::attach_slave(port, slave))
            .map_err(|e| format!("cannot open serial port: {e}")),
            Transport::Mqtt => Err("not a Modbus device".into()),
        };
        match result {
            Ok(context) => {
                self.context = Some(context);
                self.retry_at = None;
                Ok(())
            }
            Err(why) => Err(self.fail(why)),
        }
    }

    /// Writes holding registers (function 16) with the same timeout and reconnect rules.
    pub async fn write(&mut self, address: u16, values: &[u16]) -> Result<(), ReadFailure> {
        if self.context.is_none() {
            self.connect().await?;
        }
        let timeout = self.timeout;
        let context = self.context.as_mut().expect("connected");
        match tokio::time::timeout(timeout, context.write_multiple_registers(address, values)).await
        {
            Ok(Ok(Ok(()))) => {
                self.backoff = MIN_BACKOFF;
                Ok(())
            }
            Ok(Ok(Err(code))) => Err(ReadFailure::Exception(format!("{code:?}"))),
            Ok(Err(e)) => Err(self.fail(format!("write failed: {e}"))),
            Err(_) => Err(self.fail(format!("no answer within {timeout:?}"))),
        }
    }
}

impl RegisterSource for ModbusLink {
    async fn read(&mut self, address: u16, count: u16) -> Result<Vec<u16>, ReadFailure> {
        if self.context.is_none() {
            self.connect().await?;
        }
        let timeout = self.timeout;
        let context = self.context.as_mut().expect("connected");
        // Through `call`, not `read_holding_registers`: that one asserts (in debug builds) that
        // the device answered as many registers as asked, so a short answer was a panic.
        let request = Request::ReadHoldingRegisters(address, count);
        match tokio::time::timeout(timeout, context.call(request)).await {
            Ok(Ok(Ok(Response::ReadHoldingRegisters(words))))
                if words.len() == usize::from(count) =>
            {
                self.backoff = MIN_BACKOFF;
                Ok(words)
            }
            Ok(Ok(Ok(Response::ReadHoldingRegisters(words)))) => Err(self.fail(format!(
                "asked for {count} registers at {address}, got {}",
                words.len()
            ))),
            Ok(Ok(Ok(other))) => Err(self.fail(format!(
                "asked for registers at {address}, got another answer: {other:?}"
            ))),
            Ok(Ok(Err(code))) => Err(ReadFailure::Exception(format!("{code:?}"))),
            Ok(Err(e)) => Err(self.fail(format!("read failed: {e}"))),
            Err(_) => Err(self.fail(format!("no answer within {timeout:?}"))),
        }
    }
}

/// RTU serial ports through termios and a non-blocking file descriptor.
pub mod serial {
    use super::Parity;
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::Path;
    use std::pin::Pin;
    use std::task::{Context, Poll, ready};
    use tokio::io::unix::AsyncFd;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    /// An open serial port.
    #[derive(Debug)]
    pub struct SerialPort {
        fd: AsyncFd<OwnedFd>,
    }

    fn baud_constant(baud: u32) -> io::Result<libc::speed_t> {
        Ok(match baud {
            1200 => libc::B1200,
            2400 => libc::B2400,
            4800 => libc::B4800,
            9600 => libc::B9600,
            19200 => libc::B19200,
            38400 => libc::B38400,
            57600 => libc::B57600,
            115200 => libc::B115200,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("baud rate {other} is not supported; use 9600, 19200, 38400 or 115200"),
                ));
            }
        })
    }

    /// Opens `path` raw, 8 data bits, 1 stop bit, with `parity`.
    pub fn open(path: &Path, baud: u32, parity: Parity) -> io::Result<SerialPort> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)?;
        let fd: OwnedFd = file.into();
        let raw = fd.as_raw_fd();
        // SAFETY: `raw` is an open descriptor owned by `fd`; termios is plain data.
        unsafe {
            let mut tio: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(raw, &mut tio) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::cfmakeraw(&mut tio);
            let speed = baud_constant(baud)?;
            libc::cfsetispeed(&mut tio, speed);
            libc::cfsetospeed(&mut tio, speed);
            tio.c_cflag |= libc::CLOCAL | libc::CREAD;
            tio.c_cflag &= !(libc::PARENB | libc::PARODD | libc::CSTOPB);
            match parity {
                Parity::None => {}
                Parity::Even => tio.c_cflag |= libc::PARENB,
                Parity::Odd => tio.c_cflag |= libc::PARENB | libc::PARODD,
            }
            if libc::tcsetattr(raw, libc::TCSANOW, &tio) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        SerialPort::from_fd(fd)
    }

    impl SerialPort {
        /// Wraps an already configured descriptor (a serial port or a pseudo-terminal),
        /// switching it to non-blocking mode.
        pub fn from_fd(fd: OwnedFd) -> io::Result<SerialPort> {
            let raw = fd.as_raw_fd();
            // SAFETY: fcntl on an open descriptor owned by `fd`.
            unsafe {
                let flags = libc::fcntl(raw, libc::F_GETFL);
                if flags < 0 || libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // SAFETY: `fd` is an open descriptor that the AsyncFd owns for its whole lifetime.
            let fd =
                unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
            Ok(SerialPort { fd })
        }
    }

    impl AsyncRead for SerialPort {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            loop {
                let mut guard = ready!(self.fd.poll_read_ready(cx))?;
                let unfilled = buf.initialize_unfilled();
                let result = guard.try_io(|fd| {
                    // SAFETY: writing into an initialised buffer of the given length.
                    let n = unsafe {
                        libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                    };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                });
                match result {
                    Ok(Ok(n)) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Ok(Err(e)) => return Poll::Ready(Err(e)),
                    Err(_would_block) => continue,
                }
            }
        }
    }

    impl AsyncWrite for SerialPort {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            loop {
                let mut guard = ready!(self.fd.poll_write_ready(cx))?;
                let result = guard.try_io(|fd| {
                    // SAFETY: reading from a valid slice of the given length.
                    let n =
                        unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                });
                match result {
                    Ok(r) => return Poll::Ready(r),
                    Err(_would_block) => continue,
                }
            }
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}
