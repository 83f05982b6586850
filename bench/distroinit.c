/*
 * /init of bench/gendistro.py's guest: load Debian's qemu_fw_cfg.ko, then become lvinit.
 *
 * Debian's cloud kernel builds the fw_cfg driver as a module (CONFIG_FW_CFG_SYSFS=m); its
 * probe is what writes the guest's VMCOREINFO address to QEMU's vmcoreinfo device, so a
 * dump of a guest that never loaded it has no VMCOREINFO and drgn cannot open it alone.
 * No busybox: a static program needs nothing on the build machine but gcc and libc.a.
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int fd;

	mkdir("/dev", 0755);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	fd = open("/dev/console", O_RDWR);
	if (fd >= 0) {
		dup2(fd, 1);
		dup2(fd, 2);
	}
	fd = open("/qemu_fw_cfg.ko", O_RDONLY);
	if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) != 0)
		perror("distroinit: qemu_fw_cfg.ko");
	else
		printf("distroinit: qemu_fw_cfg loaded\n");
	fflush(stdout);
	execv("/lvinit", argv);
	perror("distroinit: /lvinit");
	return 1;
}
