/** config.dump and spec.dump as Podman writes them. */
export const podmanConfigDump = {
  id: "24c7b199bf26",
  name: "web-counter",
  rootfsImageID: "b1e2842282687f25",
  rootfsImageName: "localhost/busybox:test",
  RawImageName: "localhost/busybox:test",
  runtime: "runc",
  createdTime: "2026-11-24T09:34:50.095159921Z"
}
export const podmanSpecDump = { ociVersion: "1.2.0", annotations: { "io.container.manager": "libpod" } }
