-- Smoke test with an independent LSP client: headless Neovim 0.7 (Debian's) starts `swespot serve`, asks
-- for an inline completion (the custom method) and for code actions, and exits non-zero on any failure.
-- Inputs come from the environment: SWESPOT_SMOKE_PYTHON, SWESPOT_SMOKE_MODEL, SWESPOT_SMOKE_REPO.
local function fail(msg)
  io.stderr:write("nvim smoke: " .. msg .. "\n")
  vim.cmd("cquit 1")
end

local ok, err = pcall(function()
  local repo = os.getenv("SWESPOT_SMOKE_REPO")
  local cmd = { os.getenv("SWESPOT_SMOKE_PYTHON"), "-m", "swespot", "serve",
                "--model", os.getenv("SWESPOT_SMOKE_MODEL"), "--repo", repo }
  local client_id = vim.lsp.start_client({ name = "swespot", cmd = cmd, root_dir = repo })
  if not client_id then return fail("the server did not start") end
  vim.cmd("edit " .. repo .. "/calc/report.py")
  local buf = vim.api.nvim_get_current_buf()
  vim.lsp.buf_attach_client(buf, client_id)
  -- vim.wait runs Neovim's event loop until the condition holds (the initialize answer arrived)
  if not vim.wait(60000, function()
    local client = vim.lsp.get_client_by_id(client_id)
    return client ~= nil and client.initialized
  end) then return fail("initialize did not finish") end

  local uri = vim.uri_from_bufnr(buf)
  local completion = vim.lsp.buf_request_sync(buf, "swespot/inlineCompletion",
    { textDocument = { uri = uri }, position = { line = 3, character = 14 } }, 60000)
  local answer = completion and completion[client_id]
  if not answer or answer.err or not answer.result.items[1] or answer.result.items[1].insertText == "" then
    return fail("no inline completion: " .. vim.inspect(answer))
  end

  local range = { start = { line = 3, character = 0 }, ["end"] = { line = 3, character = 0 } }
  local actions = vim.lsp.buf_request_sync(buf, "textDocument/codeAction",
    { textDocument = { uri = uri }, range = range, context = { diagnostics = {} } }, 60000)
  local found = false
  for _, action in ipairs((actions and actions[client_id] and actions[client_id].result) or {}) do
    if action.title:find("Explain", 1, true) then found = true end
  end
  if not found then return fail("no code actions: " .. vim.inspect(actions)) end

  vim.lsp.stop_client(client_id)
  vim.wait(10000, function() return vim.lsp.get_client_by_id(client_id) == nil end)
  io.stdout:write("nvim smoke: ok\n")
  vim.cmd("qall!")
end)
if not ok then fail(tostring(err)) end
