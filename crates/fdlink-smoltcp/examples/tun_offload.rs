//! TCP echo on port 7 over a TUN opened in one call, with every offload the
//! kernel grants: `tun_offload TUN_NAME ADDRESS/PREFIX`. It opens (or
//! creates) the TUN, prints `ready` and serves one connection at a time;
//! the kernel side (its address, link up) is yours, e.g.
//! `ip addr add 10.9.0.1/24 dev tun0; ip link set tun0 up`.

use std::time::Duration;

use fdlink_core::{Link, Offload};
use fdlink_smoltcp::{DeviceConfig, FdlinkDevice, poll};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpCidr};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, cidr] = &args[..] else {
        return Err("usage: tun_offload TUN_NAME ADDRESS/PREFIX".into());
    };
    let cidr: IpCidr = cidr.parse().map_err(|()| "bad ADDRESS/PREFIX")?;
    let link = Link::tun(name).offload(Offload::Auto);
    let mut device = FdlinkDevice::open(link, DeviceConfig::default())?;
    let now = smoltcp::time::Instant::now();
    let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut device, now);
    iface.update_ip_addrs(|a| a.push(cidr).expect("room for one address"));
    let mut sockets = SocketSet::new(vec![]);
    let buffer = || tcp::SocketBuffer::new(vec![0; 1 << 20]);
    let echo = sockets.add(tcp::Socket::new(buffer(), buffer()));
    let mut scratch = vec![0; 64 << 10];
    let tick = Duration::from_millis(100);
    println!("ready");
    loop {
        let socket = sockets.get_mut::<tcp::Socket<'_>>(echo);
        if !socket.is_open() {
            socket.listen(7)?;
        }
        while socket.can_recv() && socket.send_queue() < socket.send_capacity() {
            let room = (socket.send_capacity() - socket.send_queue()).min(scratch.len());
            let n = socket.recv_slice(&mut scratch[..room])?;
            socket.send_slice(&scratch[..n])?;
        }
        // The client finished sending and has all its echo: close too.
        if !socket.may_recv() && socket.may_send() && socket.send_queue() == 0 {
            socket.close();
        }
        // A dead link (the TUN deleted) ends the loop with the reason.
        poll(&mut iface, &mut device, &mut sockets, tick)?;
    }
}
