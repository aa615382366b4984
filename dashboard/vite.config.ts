import { defineConfig } from "vitest/config";
import react from "@vitejs/plugin-react";

// `npm run dev` proxies the API (started by `inventiv dev` on :8000) so cookies stay same-origin.
const api = process.env.INVENTIV_API_URL ?? "http://localhost:8000";

export default defineConfig({
  plugins: [react()],
  base: "/",
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 600 },
  server: { proxy: { "/api": { target: api, changeOrigin: true } } },
  test: { environment: "node", include: ["src/**/*.test.ts"] },
});
