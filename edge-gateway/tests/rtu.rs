//! Modbus RTU: RTU frames over TCP, and a real serial line (a pseudo-terminal configured with
//! termios by the gateway) bridged to the same RTU server.

mod common;

use common::*;
use edge_gateway::config::{DeviceConfig, Parity, Role, Transport};
use edge_gateway::modbus::serial::SerialPort;
use edge_gateway::reader::ModbusDevice;
use edge_gateway::sample::Channel;
use gridmesh_runtime::clock::Clock;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

fn pv_counter_wh(device_values: &edge_gateway::sample::DeviceValues) -> i64 {
    device_values
        .counters
        .iter()
        .find(|(c, _)| *c == Channel::Pv)
        .map(|(_, c)| c.mwh / 1000)
        .expect("a PV counter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_tcp_reads_sunspec() {
    let clock = Clock::scaled(epoch(), 1.0);
    let home = start_home(clock.clone(), epoch()).await;
    let addr = serve_rtu_over_tcp(&home).await;
    let mut config = DeviceConfig::modbus_tcp("inv", Role::Inverter, "127.0.0.1", addr.port(), 1);
    config.transport = Transport::RtuOverTcp;
    let mut device = ModbusDevice::new(config, Duration::from_millis(500));
    let values = device.poll().await.unwrap();
    let expected = home.counters(clock.now())[2];
    assert!((pv_counter_wh(&values) - expected).abs() <= 1);
    assert_eq!(device.models().unwrap()[0].id, 103);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_a_serial_line() {
    let clock = Clock::scaled(epoch(), 1.0);
    let home = start_home(clock.clone(), epoch()).await;
    let server = serve_rtu_over_tcp(&home).await;
    // A pseudo-terminal: the gateway opens the slave side as its serial port; the master side
    // is bridged to the RTU server like a serial-to-TCP converter would.
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors; null name/termios/winsize are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty failed");
    // SAFETY: both descriptors were just returned by openpty and are owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let slave_path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&slave)
    ))
    .unwrap();
    let mut master = SerialPort::from_fd(master).unwrap();
    tokio::spawn(async move {
        let mut tcp = tokio::net::TcpStream::connect(server).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut master, &mut tcp).await;
    });
    let mut config = DeviceConfig::modbus_tcp("meter", Role::GridMeter, "", 0, 3);
    config.transport = Transport::ModbusRtu;
    config.host = None;
    config.port = None;
    config.serial_path = Some(slave_path);
    config.baud = Some(19200);
    config.parity = Some(Parity::Even);
    let mut device = ModbusDevice::new(config, Duration::from_millis(1000));
    let values = device.poll().await.unwrap();
    let counters = home.counters(clock.now());
    let export = values
        .counters
        .iter()
        .find(|(c, _)| *c == Channel::GridExport)
        .unwrap()
        .1
        .mwh
        / 1000;
    assert!(
        (export - counters[1]).abs() <= 1,
        "{export} vs {}",
        counters[1]
    );
    // A second poll reuses the open port.
    device.poll().await.unwrap();
    drop(slave);
}
