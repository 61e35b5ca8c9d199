/* Runs one provisioning through the no_std core, linked as a static
 * library, and exits with 0 when it reaches Done. `cargo xtask nostd`
 * builds and runs it on x86_64 and, under qemu, on armv7. */
#include <stdbool.h>
#include <stdio.h>

bool fpc_provision_selftest(void);

int main(void) {
    if (!fpc_provision_selftest()) {
        fprintf(stderr, "fleet-provisioning-core self-test failed\n");
        return 1;
    }
    printf("fleet-provisioning-core self-test passed\n");
    return 0;
}
